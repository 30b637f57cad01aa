# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the options in module_utils/args_common.py."""

from __future__ import annotations


class ModuleDocFragment:
    # SCOPE_ARGS
    DOCUMENTATION = r"""
options:
  vms:
    description:
      - Names of the VMs to act on, as given by C(-name guest=NAME) (or the QMP socket's file name when a VM has no name).
      - Empty means every VM in scope.
      - A name that matches no running VM and no journal record is an error.
    type: list
    elements: str
    default: []
  state_dir:
    description:
      - Directory of the restart journal and the state files, created with mode 0700.
      - It must be on a filesystem that survives the reboot, and have room for the state files.
    type: path
    default: /var/lib/liveupdate-cpr
  timeout:
    description:
      - Seconds one VM's migration (save or load) may take before it counts as failed.
      - Also how long a save, a restore or a plan waits for another save or restore of the host's VMs (a
        module a killed controller left running, or the boot unit) before it refuses.
    type: int
    default: 600
requirements:
  - qemu.qmp (Python library) on the managed host
  - QEMU 8.2 or later (cpr-reboot migration mode)
notes:
  - QMP is root over a VM, so the modules run as root, and the journal and state files are root-only.
  - Secrets on a QEMU command line, such as C(-object secret,data=...), are masked in everything the modules return.
"""

    # SELECTION_ARGS
    SELECTION = r"""
options:
  qmp_dir:
    description:
      - Only VMs whose QMP unix socket lies under this directory are in scope.
      - When unset, every QEMU process on the host is in scope.
      - A socket there that answers but is not a QMP monitor is an error; a socket nothing listens on is a warning.
    type: path
"""

    # RAM_ARGS
    RAM = r"""
options:
  reboot_method:
    description:
      - What happens between save and restore; it decides whether guest RAM survives.
      - V(kexec) keeps RAM on devdax, DAX-mounted pmem and declared persistent paths.
      - V(reboot) (firmware reboot) keeps only real NVDIMM RAM and declared persistent paths, not C(memmap=) pmem.
      - V(none) (QEMU restart only) keeps any shared, named memory-backend-file RAM, tmpfs included.
    type: str
    choices: [kexec, reboot, none]
    default: kexec
  ram_policy:
    description:
      - What to do with a VM whose RAM would not survive.
      - V(fail) refuses before any VM of the host is paused.
      - V(save_ram) writes the RAM into the state file (no x-ignore-shared). Slower, larger, but safe.
    type: str
    choices: [fail, save_ram]
    default: fail
  ram_policy_per_vm:
    description:
      - Per-VM overrides of O(ram_policy), as a mapping of VM name to V(fail) or V(save_ram).
    type: dict
    default: {}
  persistent_paths:
    description:
      - Paths whose files the operator declares to survive the reboot, for RAM backends on them.
    type: list
    elements: path
    default: []
"""

    # the attributes of a module that only reads
    READ_ONLY = r"""
attributes:
  check_mode:
    description: Read-only; the same in check mode.
    support: full
  diff_mode:
    description: No diff.
    support: none
  idempotent:
    description: Changes nothing.
    support: full
"""

    # GUEST_ARGS
    GUEST = r"""
options:
  guest_time_sync:
    description:
      - A guest's clock stands still while its VM is stopped, so after a resume it is behind by the blackout. After
        each resume the module sets it from the host's clock with the guest agent's C(guest-set-time), and reports
        the offset before and after in C(guest_clock).
      - The agent is reached through the VM's agent channel, the unix socket chardev (C(server=on)) behind
        C(-device virtserialport,name=org.qemu.guest_agent.0); C(qemu-guest-agent) must run in the guest.
      - V(auto) sets the clock when the VM has an agent channel and reports C(not synced) with the reason when it has
        none or the agent does not answer within 5 s.
      - V(required) does the same, and fails the module when a clock could not be set; the VMs keep running.
      - V(off) leaves the guest's clock alone.
    type: str
    choices: [auto, required, "off"]
    default: auto
  guest_time_sync_per_vm:
    description:
      - Per-VM overrides of O(guest_time_sync), as a mapping of VM name to V(auto), V(required) or V(off).
    type: dict
    default: {}
"""

    # SUSPEND_ARGS
    SUSPEND = r"""
options:
  guest_suspend:
    description:
      - QEMU saves a VM with a C(vfio-pci) device for cpr-reboot only while its guest is suspended to RAM. Such a
        guest is suspended through its agent (C(guest-suspend-ram)) before the save, once its journal record is on
        disk, and QEMU's run state C(suspended) is awaited (60 s at most); the restore wakes it with
        C(system_wakeup), and then sets its clock. Its blackout counts from its SUSPEND to its WAKEUP.
      - The preflight refuses such a VM, before any VM is paused, when it has no agent channel, its agent does not
        answer C(guest-ping), or its machine lacks C(wakeup-suspend-support) (on q35, C(-global ICH9-LPC.disable_s3=0)).
      - V(auto) suspends the VMs with a C(vfio-pci) device; V(always) suspends every VM; V(never) suspends none, and
        refuses a VFIO VM.
    type: str
    choices: [auto, always, never]
    default: auto
  guest_suspend_per_vm:
    description:
      - Per-VM overrides of O(guest_suspend), as a mapping of VM name to V(auto), V(always) or V(never).
    type: dict
    default: {}
"""
