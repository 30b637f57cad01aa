# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Will a VM's RAM still be there when its QEMU starts again?

x-ignore-shared leaves RAM out of the state file only for named, shared
memory-backend-file RAM, so the RAM itself must survive the gap: a QEMU
restart (`none`), a kexec, or a firmware reboot. Where it would not, the
policy decides: `save_ram` writes RAM into the state file, `fail` refuses
before any VM is paused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.liveupdate.cpr.plugins.module_utils.paths import is_under
from ansible_collections.liveupdate.cpr.plugins.module_utils.qemu_argv import RamBackend

REBOOT_METHODS = ("kexec", "reboot", "none")
RAM_POLICIES = ("fail", "save_ram")
MODE_IGNORE_SHARED = "ignore-shared"
MODE_SAVE_RAM = "save-ram"
FIX_RAM = ("put the RAM of %(vm)s on a share=on memory-backend-file on /dev/daxN.M or DAX pmem, declare its path in "
           "persistent_paths, or write its RAM into the state file with ram_policy_per_vm: {%(vm)s: save_ram}")
DAX_DEVICE = re.compile(r"^/dev/dax\d+\.\d+$")
# An nd bus of provider e820 is `memmap=` RAM: it survives kexec, not a power cycle.
VOLATILE_ND_PROVIDER = "e820"


@dataclass
class Mount:
    point: str
    source: str
    fstype: str
    options: Tuple[str, ...]


def read_mounts(path: str = "/proc/self/mounts") -> List[Mount]:
    mounts = []
    with open(path) as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 4:
                point = parts[1].replace("\\040", " ")
                mounts.append(Mount(point, parts[0], parts[2], tuple(parts[3].split(","))))
    return mounts


def mount_of(path: str, mounts: Sequence[Mount]) -> Optional[Mount]:
    real = os.path.realpath(path)
    best = None
    for mount in mounts:
        prefix = mount.point.rstrip("/") + "/"
        if (real == mount.point or real.startswith(prefix) or mount.point == "/") and (
                best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best


def nd_provider(device: str) -> Optional[str]:
    """The provider of the nd bus behind a dax or pmem device ('e820', 'ACPI.NFIT')."""
    try:
        rdev = os.stat(device).st_rdev
        node = os.path.realpath("/sys/dev/%s/%d:%d" % (
            "char" if device.startswith("/dev/dax") else "block", os.major(rdev), os.minor(rdev)))
    except OSError:
        return None
    while node not in ("/", "/sys"):
        candidate = os.path.join(node, "provider")
        if os.path.basename(node).startswith("ndbus") and os.path.exists(candidate):
            with open(candidate) as handle:
                return handle.read().strip()
        node = os.path.dirname(node)
    return None


@dataclass
class BackendVerdict:
    backend: RamBackend
    skippable: bool            # x-ignore-shared leaves it out of the state file
    survives: bool             # its contents outlive the gap of this reboot method
    reason: str

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.backend.as_dict(), skippable=self.skippable, survives=self.survives, reason=self.reason)


@dataclass
class RamVerdict:
    reboot_method: str
    policy: str
    mode: str                                  # ignore-shared or save-ram
    ok: bool
    backends: List[BackendVerdict] = field(default_factory=list)
    reasons: List[str] = field(default_factory=list)

    @property
    def x_ignore_shared(self) -> bool:
        return self.mode == MODE_IGNORE_SHARED

    def as_dict(self) -> Dict[str, Any]:
        return {"reboot_method": self.reboot_method, "policy": self.policy, "mode": self.mode,
                "ok": self.ok, "reasons": self.reasons, "backends": [b.as_dict() for b in self.backends]}


def judge_backend(backend: RamBackend, reboot_method: str, persistent_paths: Sequence[str],
                  mounts: Sequence[Mount]) -> BackendVerdict:
    if backend.type != "memory-backend-file" or not backend.share or not backend.mem_path:
        what = {"memory-backend-ram": "anonymous RAM", "memory-backend-memfd": "memfd RAM"}.get(
            backend.type, "a private file mapping" if backend.mem_path else backend.type)
        return BackendVerdict(backend, False, False,
                              "%s is %s; x-ignore-shared only skips share=on memory-backend-file RAM" % (backend.id, what))
    path = backend.mem_path
    if reboot_method == "none":
        return BackendVerdict(backend, True, True, "%s is shared file RAM on %s; QEMU restarts without a reboot" % (
            backend.id, path))
    if is_under(path, *persistent_paths):
        return BackendVerdict(backend, True, True, "%s is on %s, declared persistent by the operator" % (backend.id, path))
    real = os.path.realpath(path)
    mount = mount_of(real, mounts)
    if DAX_DEVICE.match(real) or (mount is not None and "dax" in " ".join(mount.options)):
        device = real if DAX_DEVICE.match(real) else (mount.source if mount else real)
        provider = nd_provider(device)
        if reboot_method == "kexec":
            return BackendVerdict(backend, True, True, "%s is on persistent memory %s, kept across kexec" % (
                backend.id, device))
        if provider and provider != VOLATILE_ND_PROVIDER:
            return BackendVerdict(backend, True, True, "%s is on persistent memory %s (%s), kept across a power cycle" % (
                backend.id, device, provider))
        return BackendVerdict(backend, True, False, "%s is on %s, memmap= RAM (provider %s) that a firmware reboot clears" % (
            backend.id, device, provider or "unknown"))
    fstype = mount.fstype if mount else "unknown"
    return BackendVerdict(backend, True, False, "%s is on %s (%s), which does not survive a %s" % (
        backend.id, path, fstype, reboot_method))


def judge(vm: str, backends: Sequence[RamBackend], reboot_method: str, policy: str,
          persistent_paths: Sequence[str] = (), mounts: Optional[Sequence[Mount]] = None) -> RamVerdict:
    """The verdict for one VM; raises nothing, so vm_info can show every VM's."""
    mounts = read_mounts() if mounts is None else mounts
    verdicts = [judge_backend(b, reboot_method, persistent_paths, mounts) for b in backends]
    kept = all(v.skippable and v.survives for v in verdicts)
    if kept:
        return RamVerdict(reboot_method, policy, MODE_IGNORE_SHARED, True, verdicts)
    reasons = [v.reason for v in verdicts if not (v.skippable and v.survives)]
    if policy == "save_ram":
        return RamVerdict(reboot_method, policy, MODE_SAVE_RAM, True, verdicts,
                          reasons + ["ram_policy save_ram: RAM goes into the state file"])
    return RamVerdict(reboot_method, policy, MODE_IGNORE_SHARED, False, verdicts, reasons)


# What a VM's restore asks of the boot it comes back in, recorded with its save (the journal's ram_survives).
SURVIVES_IN_STATE_FILE = "state_file"   # RAM is in the state file: any boot will do
SURVIVES_POWER_CYCLE = "power_cycle"    # an NVDIMM or declared-persistent RAM: any boot will do
SURVIVES_KEXEC = "kexec"                # memmap= RAM: only the planned kexec (boot_token) keeps it
SURVIVES_RESTART = "restart"            # only a QEMU restart in the same boot keeps it
NEEDS_NO_PROOF = (SURVIVES_IN_STATE_FILE, SURVIVES_POWER_CYCLE)


def survival(vm: str, verdict: RamVerdict, backends: Sequence[RamBackend], persistent_paths: Sequence[str] = (),
             mounts: Optional[Sequence[Mount]] = None) -> str:
    """Which boots keep this VM's skipped RAM: one of the SURVIVES_* values."""
    if not verdict.x_ignore_shared:
        return SURVIVES_IN_STATE_FILE
    if judge(vm, backends, "reboot", "fail", persistent_paths, mounts).ok:
        return SURVIVES_POWER_CYCLE
    return SURVIVES_KEXEC if verdict.reboot_method == "kexec" else SURVIVES_RESTART


def recorded_survival(record: Dict[str, Any]) -> str:
    """A journal record's ram_survives; a record written before it was recorded is judged by its reboot method."""
    if record.get("ram_survives"):
        return str(record["ram_survives"])
    if not record.get("x_ignore_shared"):
        return SURVIVES_IN_STATE_FILE
    return {"reboot": SURVIVES_POWER_CYCLE, "kexec": SURVIVES_KEXEC}.get(str(record.get("reboot_method")), SURVIVES_RESTART)


def overlapping_ranges(vms: Dict[str, Sequence[RamBackend]]) -> List[str]:
    """Shared-file RAM of two VMs that covers the same bytes of one file or device."""
    ranges: List[Tuple[str, int, int, str, str]] = []
    for vm, backends in vms.items():
        for backend in backends:
            if backend.mem_path and backend.share and backend.size:
                ranges.append((os.path.realpath(backend.mem_path), backend.offset,
                               backend.offset + backend.size, vm, backend.id))
    problems = []
    ranges.sort()
    for index, first in enumerate(ranges):
        for second in ranges[index + 1:]:
            if second[0] != first[0] or second[1] >= first[2]:
                break  # sorted by start: no later range of this path reaches back into `first`
            problems.append("%s:%s and %s:%s both use bytes %d-%d of %s" % (
                first[3], first[4], second[3], second[4], second[1], min(first[2], second[2]) - 1, first[0]))
    return problems
