; cpr-test-guest: a 512-byte boot sector that proves a cpr-reboot restore.
;
; At its own start it stores an RDTSC nonce (changes on every boot, so a
; rebooted guest is told apart from a resumed one), fills guest RAM from
; 2 MiB to the top of low RAM with 0xA5, and then, once per pass (every
; PASS_EVERY PIT ticks), adds one to the first byte of every page in that
; range and counts the pass. Between ticks it halts, so a dozen guests share
; two TCG cores. Built with -DRTC_RATE=N it ticks from the CMOS clock's periodic
; interrupt instead (32768 >> (N - 1) Hz: 15 is 2 Hz) and stops the PIT, whose
; slowest rate is 18.2 Hz: nested under TCG, each timer wakeup of an idle QEMU
; costs a real CPU about 7 ms, so fewer wakeups are what make a nested guest cheap.
;
; Layout read from outside (guest physical addresses, little endian):
;   0x5000  u32  magic 'CPRG'
;   0x5004  u32  pass counter (completed passes)
;   0x5008  u64  RDTSC nonce written once at start
;   0x5010  u32  first byte of the page range (0x200000)
;   0x5014  u32  end of the page range (exclusive)
;   0x5018  u32  the CMOS clock at the last pass, in seconds since midnight
;   0x501c  u32  longest stall: the most CMOS seconds between two passes
;   0x5020  u32  the CMOS clock when that stall ended
; The CMOS clock follows the host's wall clock (QEMU's default -rtc clock=host),
; also while the VM is stopped, so the longest stall is the guest's own view of
; its blackout, to the second, whatever ticks TCG dropped.
; After N completed passes every page's first byte is (0xA5 + N) & 0xFF;
; pages of an unfinished pass hold one more than the rest.

bits 16
org 0x7c00

INFO        equ 0x5000
RANGE_START equ 0x200000
IDT_BASE    equ 0x1000
IDT_ENTRIES equ 48
%ifndef PIT_DIVISOR
%define PIT_DIVISOR 11932        ; about 100 Hz; nasm -DPIT_DIVISOR=N for a slower tick
%endif
%ifndef PASS_EVERY
%define PASS_EVERY 1             ; ticks per pass; nasm -DPASS_EVERY=N for fewer passes (the PIT's slowest is 18.2 Hz)
%endif

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
    in al, 0x92                 ; fast A20
    or al, 2
    out 0x92, al
    lgdt [gdt_desc]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp 0x08:protected

bits 32
protected:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7000

    ; every vector up to IDT_ENTRIES points at one handler that acknowledges
    ; the PIC; only IRQ0 is unmasked, so it only ever sees timer ticks
    mov edi, IDT_BASE
    mov ecx, IDT_ENTRIES
.idt:
    mov eax, tick
    mov [edi], ax
    mov word [edi + 2], 0x08
    mov word [edi + 4], 0x8e00
    shr eax, 16
    mov [edi + 6], ax
    add edi, 8
    loop .idt
    lidt [idt_desc]

    ; remap the PIC to vectors 0x20/0x28 and mask all but IRQ0
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xa1, al
    mov al, 1
    out 0x21, al
    out 0xa1, al
%ifdef RTC_RATE
    mov al, 0xfb                ; the cascade only: IRQ8, the CMOS clock, on the slave
    out 0x21, al
    mov al, 0xfe
    out 0xa1, al

    ; PIT channel 0 one-shot (mode 0): it fires once, masked, and QEMU stops its timer
    mov al, 0x30
    out 0x43, al
    xor al, al
    out 0x40, al
    out 0x40, al
%else
    mov al, 0xfe
    out 0x21, al
    mov al, 0xff
    out 0xa1, al

    ; PIT channel 0, rate generator
    mov al, 0x34
    out 0x43, al
    mov ax, PIT_DIVISOR
    out 0x40, al
    mov al, ah
    out 0x40, al
%endif

    ; top of low RAM = 16 MiB + CMOS[0x34..0x35] * 64 KiB
    mov al, 0x35
    out 0x70, al
    in al, 0x71
    mov ah, al
    mov al, 0x34
    out 0x70, al
    in al, 0x71
    movzx ebx, ax
    shl ebx, 16
    add ebx, 0x1000000

    mov dword [INFO + 0x10], RANGE_START
    mov [INFO + 0x14], ebx
    rdtsc
    mov [INFO + 0x08], eax
    mov [INFO + 0x0c], edx
    mov dword [INFO + 0x04], 0

    ; CMOS clock in binary, 24-hour (register B bits 2 and 1)
    mov al, 0x0b
    out 0x70, al
    in al, 0x71
%ifdef RTC_RATE
    or al, 0x46                 ; and periodic interrupts
%else
    or al, 6
%endif
    mov ah, al
    mov al, 0x0b
    out 0x70, al
    mov al, ah
    out 0x71, al
%ifdef RTC_RATE
    mov al, 0x0a                ; register A: the 32.768 kHz time base and the periodic rate
    out 0x70, al
    mov al, 0x20 | RTC_RATE
    out 0x71, al
    mov al, 0x0c                ; reading register C clears a pending interrupt
    out 0x70, al
    in al, 0x71
%endif
    call clock_now
    mov [INFO + 0x18], eax
    mov dword [INFO + 0x1c], 0
    mov [INFO + 0x20], eax

    mov edi, RANGE_START
    mov ecx, ebx
    sub ecx, edi
    shr ecx, 2
    mov eax, 0xa5a5a5a5
    cld
    rep stosd
    mov dword [INFO], 'CPRG'

    sti
.pass:
    mov ecx, PASS_EVERY
.idle:
    hlt
    dec ecx
    jnz .idle
    mov edi, RANGE_START
.page:
    inc byte [edi]
    add edi, 4096
    cmp edi, ebx
    jb .page
    inc dword [INFO + 0x04]
%ifdef RTC_RATE
    cli                         ; the tick handler moves the CMOS index too
    call clock_now
    sti
%else
    call clock_now
%endif
    mov edx, eax
    sub edx, [INFO + 0x18]
    jns .forward
    add edx, 86400              ; past midnight
.forward:
    mov [INFO + 0x18], eax
    cmp edx, [INFO + 0x1c]
    jbe .pass
    mov [INFO + 0x1c], edx
    mov [INFO + 0x20], eax
    jmp .pass

; eax = CMOS seconds since midnight, read until two reads agree, since the
; clock may tick between reading its hours, minutes and seconds
clock_now:
    call clock_read
    mov edx, eax
    call clock_read
    cmp eax, edx
    jne clock_now
    ret

clock_read:                     ; eax = hours * 3600 + minutes * 60 + seconds; clobbers ecx
    mov al, 4
    out 0x70, al
    in al, 0x71
    movzx ecx, al
    imul ecx, ecx, 60
    mov al, 2
    out 0x70, al
    in al, 0x71
    movzx eax, al
    add ecx, eax
    imul ecx, ecx, 60
    xor eax, eax
    out 0x70, al
    in al, 0x71
    movzx eax, al
    add eax, ecx
    ret

tick:
    push eax
%ifdef RTC_RATE
    mov al, 0x0c                ; the CMOS clock raises its next interrupt once register C is read
    out 0x70, al
    in al, 0x71
    mov al, 0x20
    out 0xa0, al
%else
    mov al, 0x20
%endif
    out 0x20, al
    pop eax
    iret

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff       ; 0x08 flat code
    dq 0x00cf92000000ffff       ; 0x10 flat data
gdt_desc:
    dw gdt_desc - gdt - 1
    dd gdt
idt_desc:
    dw IDT_ENTRIES * 8 - 1
    dd IDT_BASE

times 510 - ($ - $$) db 0
    dw 0xaa55
