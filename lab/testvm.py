"""Real QEMU test VMs running the cpr test guest, and probes of their RAM.

Used by the tests, the benchmark and the demo. Everything runs real QEMU
under TCG; nothing here is a fake.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from qemu.qmp import ConnectError
from qemu.qmp.legacy import QEMUMonitorProtocol

from lab.guest_probe import probe_socket, wait_started

GUEST_ASM = Path(__file__).parent / "guest" / "cpr-test-guest.asm"
QEMU = os.environ.get("LIVEUPDATE_QEMU", "qemu-system-x86_64")
PIT_HZ = 1193182             # the PIT input clock
DISK_SIZE = 1 << 20          # SeaBIOS does not boot a bare 512-byte disk
# The labs' many guests tick at 20 Hz (the PIT cannot go below about 18 Hz): at 100 Hz, two nested guests take most
# of a TCG host's two vCPUs, and the molecule lab's twelve took 1.6 of this machine's two CPUs.
LAB_GUEST_HZ = 20
# The kexec lab's nested guests tick at 2 Hz from the CMOS clock, with the PIT stopped: nested under TCG inside a
# TCG host, an idle QEMU pays for every timer wakeup (about 7 ms of a real CPU each), and a 20 Hz PIT guest cost
# its host's QEMU a quarter of a real CPU (README, "The virtual hypervisor lab").
LAB_HOST_GUEST_RTC_HZ = 2
RTC_BASE_HZ = 32768          # the CMOS clock's time base: periodic rate N gives RTC_BASE_HZ >> (N - 1)


def guest_disk(cache_dir: Path, hz: int = 100, pass_every: int = 1, clock: str = "pit") -> Path:
    """Assemble the guest (nasm) into a 1 MiB raw disk, cached by source hash, tick source and rate, ticks per pass.

    A slower tick costs less CPU: nested under TCG inside a TCG host, a 100 Hz guest takes most of a vCPU.
    clock "pit" ticks from the PIT (18.2 Hz at the slowest); "rtc" from the CMOS clock, at a power of two from 2 to
    8192 Hz, with the PIT stopped."""
    source = GUEST_ASM.read_bytes()
    if clock == "rtc":
        rtc_rate = RTC_BASE_HZ.bit_length() - hz.bit_length() + 1
        if hz & (hz - 1) or not 3 <= rtc_rate <= 15:
            raise ValueError("the CMOS clock ticks at a power of two from 2 to 8192 Hz, not %d Hz" % hz)
        defines = ["-DRTC_RATE=%d" % rtc_rate]
    elif clock == "pit":
        defines = ["-DPIT_DIVISOR=%d" % round(PIT_HZ / hz)]
    else:
        raise ValueError("clock is pit or rtc, not %r" % clock)
    rate = ("%dhz" % hz if clock == "pit" else "rtc%dhz" % hz) + ("-every%d" % pass_every if pass_every != 1 else "")
    disk = cache_dir / ("cpr-test-guest-%s-%s.img" % (hashlib.sha256(source).hexdigest()[:12], rate))
    if not disk.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # names of this process's own until the rename: test workers may build the same disk at once
        boot = cache_dir / ("cpr-test-guest-%s.bin.%d" % (rate, os.getpid()))
        subprocess.run(["nasm", "-f", "bin", *defines, "-DPASS_EVERY=%d" % pass_every,
                        str(GUEST_ASM), "-o", str(boot)], check=True)
        data = boot.read_bytes()
        assert len(data) == 512 and data[-2:] == b"\x55\xaa", "guest must be one boot sector"
        boot.unlink()
        temp = disk.with_suffix(".tmp.%d" % os.getpid())
        temp.write_bytes(data + bytes(DISK_SIZE - len(data)))
        temp.rename(disk)
    return disk


@dataclass
class TestVm:
    """One VM: its name, where its QMP socket is, and how its RAM is backed."""

    __test__ = False  # not a pytest test class
    name: str
    qmp_dir: Path
    disk: Path
    ram_mb: int = 64
    ram: str = "shm"            # shm (shared tmpfs file), file:PATH, anon, memfd
    qmp_form: str = "qmp"       # qmp (-qmp unix:) or chardev (-chardev + -mon)
    extra: List[str] = field(default_factory=list)
    machine: Optional[str] = "q35"   # None: QEMU's default machine type
    binary: str = QEMU
    pid: Optional[int] = None

    @property
    def qmp_path(self) -> Path:
        return self.qmp_dir / (self.name + ".qmp")

    @property
    def own_disk(self) -> Path:
        """Each VM boots its own copy: QEMU locks a disk image for writing."""
        return self.qmp_dir / (self.name + ".img")

    @property
    def ram_path(self) -> Optional[str]:
        if self.ram == "shm":
            return "/dev/shm/liveupdate-test-%s-%s" % (os.getpid(), self.name)
        if self.ram.startswith("file:"):
            return self.ram[len("file:"):]
        return None

    def argv(self) -> List[str]:
        argv = [self.binary, "-name", "guest=%s,debug-threads=on" % self.name, "-accel", "tcg"]
        if self.machine:
            argv += ["-machine", self.machine]
        argv += ["-m", "%dM" % self.ram_mb, "-nodefaults", "-display", "none",
                 "-drive", "file=%s,format=raw,if=ide" % self.own_disk]
        size = "%dM" % self.ram_mb
        if self.ram_path:
            argv += ["-object", "memory-backend-file,id=ram0,size=%s,mem-path=%s,share=on" % (size, self.ram_path),
                     "-machine", "memory-backend=ram0"]
        elif self.ram == "memfd":
            argv += ["-object", "memory-backend-memfd,id=ram0,size=%s" % size, "-machine", "memory-backend=ram0"]
        if self.qmp_form == "qmp":
            argv += ["-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
        else:
            argv += ["-chardev", "socket,id=mon0,path=%s,server=on,wait=off" % self.qmp_path,
                     "-mon", "chardev=mon0,mode=control"]
        return argv + self.extra

    def start(self, timeout: float = 20.0) -> TestVm:
        self.qmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(self.disk, self.own_disk)
        with open(self.qmp_dir / (self.name + ".console.log"), "ab") as log:
            process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
        self.pid = process.pid
        daemonizes = "-daemonize" in self.extra
        deadline = time.monotonic() + timeout
        while not _listening(self.qmp_path):
            exited = process.poll() is not None and not (daemonizes and process.returncode == 0)
            if exited or time.monotonic() > deadline:
                raise RuntimeError("QEMU for %s did not start: %s" % (
                    self.name, (self.qmp_dir / (self.name + ".console.log")).read_text(errors="replace")))
            time.sleep(0.01)
        return self

    def qmp(self) -> QEMUMonitorProtocol:
        deadline = time.monotonic() + 10
        while True:
            monitor = QEMUMonitorProtocol(str(self.qmp_path))
            try:
                monitor.connect()
                return monitor
            except ConnectError:
                # QEMU serves one monitor client at a time; wait for the last to be gone
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def wait_booted(self, timeout: float = 20.0) -> GuestState:
        return GuestState(**wait_started(lambda: probe_socket(str(self.qmp_path)), self.name, timeout, 0.1))


def _listening(path: Path) -> bool:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        client.close()


@dataclass
class GuestState:
    magic: int
    counter: int
    nonce: int
    range_start: int
    range_end: int
    pattern_ok: bool
    pattern_detail: str
    status: str
    clock: int                  # the guest's CMOS clock at its last pass, UTC seconds of day
    longest_stall: int          # the most CMOS seconds between two passes: its own view of a blackout
    longest_stall_ended: int


def probe(vm: TestVm) -> GuestState:
    """The guest's state now, read from outside over QMP (see lab.guest_probe)."""
    return GuestState(**probe_socket(str(vm.qmp_path)))


def kill_all(qmp_dir: Path) -> None:
    """Kill every QEMU whose QMP socket is under qmp_dir, and clean its RAM files."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path("/proc/%s/cmdline" % entry).read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(qmp_dir) in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass
    for leftover in Path("/dev/shm").glob("liveupdate-test-%s-*" % os.getpid()):
        leftover.unlink()


def qemu_available() -> str:
    found = shutil.which(QEMU)
    if not found:
        raise RuntimeError("%s is not installed; run `make setup` (QEMU 8.2+ from bookworm-backports)." % QEMU)
    return found
