# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""May this VM be saved now? Everything is asked before anything is paused.

Only `query-*` commands are sent, plus one reversible change: QEMU lists
migration blockers only for the mode currently set, so the mode is set to
cpr-reboot, the blockers read, and the previous mode put back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ansible_collections.liveupdate.cpr.plugins.module_utils import guest_agent, probe, qemu_argv, ram_verdict
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import QemuProcess, binary_version
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import QmpError
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import QmpSession

CPR_REBOOT_SINCE = (8, 2)
SAVABLE_STATES = ("running", "paused")
# Where a save whose task died leaves its VM (mid-migration, paused after it, suspended by us): vm_save puts it back
# as it was, then saves it afresh (save.resume_interrupted).
INTERRUPTED_SAVE_STATES = ("finish-migrate", "postmigrate", "suspended")


@dataclass
class Readiness:
    vm: QemuProcess
    ready: bool = False
    reasons: List[str] = field(default_factory=list)
    fixes: List[str] = field(default_factory=list)
    qemu_version: Optional[str] = None
    status: Optional[str] = None
    machine_type: Optional[str] = None
    blockers: List[str] = field(default_factory=list)
    verdict: Optional[ram_verdict.RamVerdict] = None
    ram_survives: Optional[str] = None
    outdated: Optional[str] = None
    suspend: Optional[str] = None     # why its guest is suspended to RAM before the save, when it is
    probe: Optional[Dict[str, Any]] = None  # what the installed QEMU said of it, when that is another binary

    def as_dict(self) -> Dict[str, Any]:
        result = self.vm.summary()
        result.update(ready=self.ready, reasons=self.reasons, qemu_version=self.qemu_version,
                      status=self.status, machine_type=self.machine_type, blockers=self.blockers,
                      ram=self.verdict.as_dict() if self.verdict else None, outdated=self.outdated,
                      suspend=self.suspend, probe=self.probe)
        return result


def qemu_version(session: QmpSession) -> str:
    version = session.execute("query-version")["qemu"]
    return "%d.%d.%d" % (version["major"], version["minor"], version["micro"])


def run_status(session: QmpSession) -> str:
    return str(session.execute("query-status")["status"])


def resolved_machine_type(session: QmpSession) -> str:
    """The versioned machine type the VM runs, e.g. pc-q35-10.0 for `-machine q35`."""
    try:
        qom_type = str(session.execute("qom-get", {"path": "/machine", "property": "type"}))
        if qom_type.endswith("-machine"):
            return qom_type[:-len("-machine")]
    except QmpError:
        pass
    for machine in session.execute("query-machines"):
        if machine.get("is-default"):
            return str(machine["name"])
    raise QmpError("cannot tell which machine type the VM runs.", session.vm, session.socket_path)


def read_blockers(session: QmpSession) -> List[str]:
    """QEMU's own words for what blocks a cpr-reboot save, with the mode put back."""
    previous = session.execute("query-migrate-parameters").get("mode", "normal")
    session.execute("migrate-set-parameters", {"mode": "cpr-reboot"})
    try:
        return [str(reason) for reason in session.execute("query-migrate").get("blocked-reasons", [])]
    finally:
        if previous != "cpr-reboot":
            session.execute("migrate-set-parameters", {"mode": previous})


def outdated_reason(vm: QemuProcess, running_version: Optional[str]) -> Optional[str]:
    """Why this QEMU runs an older binary than the installed one, or None."""
    if vm.binary_deleted:
        return "its binary %s was deleted or replaced since it started" % vm.binary
    try:
        running = os.stat("/proc/%d/exe" % vm.pid)
        installed = os.stat(vm.binary)
    except OSError:
        return "its binary %s is no longer installed" % vm.binary
    if (running.st_dev, running.st_ino) != (installed.st_dev, installed.st_ino):
        return "%s was replaced since it started" % vm.binary
    installed_version = binary_version(vm.binary)
    if running_version and installed_version and installed_version != running_version:
        return "it runs QEMU %s, the installed binary is %s" % (running_version, installed_version)
    return None


def _probe_installed_qemu(result: Readiness) -> None:
    """The cross-version guard: the binary its restore will start must take it (probe.py)."""
    vm, machine = result.vm, str(result.machine_type)
    found = probe.probe(vm.name, vm.binary, vm.argv, machine, vm.cwd)
    result.probe = found.as_dict()
    if not found.took:
        result.reasons.append("%s, so it could not be restored after its save (machine type %s pinned, as QEMU migrates "
                              "only between the same versioned machine type)" % (found.reason, machine))
        result.fixes.append("install a QEMU that supports machine type %s and the devices of %s, or leave %s out "
                            "with vms" % (machine, vm.name, vm.name))


def _assess_suspend(result: Readiness, session: QmpSession, policy: str) -> None:
    """A VM whose guest must be suspended for its save: an agent that answers, a machine that can wake it."""
    vm = result.vm
    why = guest_agent.suspend_reason(vm.argv, policy)
    if why is None and not qemu_argv.passthrough_devices(vm.argv):
        return
    wakes = bool(session.execute("query-current-machine").get("wakeup-suspend-support"))
    refusals = guest_agent.suspend_refusals(vm.argv, vm.name, policy, why, wakes)
    if not refusals and result.status != "running":
        refusals.append("its guest must be suspended for the save, and a %s guest cannot suspend itself" % result.status)
    result.reasons.extend(refusals)
    if refusals:
        result.fixes.append(guest_agent.SUSPEND_FIX % {"vm": vm.name})
    else:
        result.suspend = why


def assess(vm: QemuProcess, reboot_method: str, policy: str, persistent_paths: Sequence[str],
           mounts: Sequence[ram_verdict.Mount], check_outdated: bool = False, suspend_policy: str = "auto",
           interrupted_save: bool = False) -> Readiness:
    """Readiness of one running VM; never raises for a VM-level problem, it lists reasons.

    interrupted_save: the journal says a save of this VM was under way; the states that save leaves are no refusal."""
    result = Readiness(vm)
    if vm.supervisor.refusal:
        result.reasons.append("supervised: %s; our quit would be undone behind our back" % vm.supervisor.refusal)
        result.fixes.append("run %s outside its supervisor (or with restarts off), or leave it out with vms" % vm.name)
    result.verdict = ram_verdict.judge(vm.name, vm.ram, reboot_method, policy, persistent_paths, mounts)
    result.ram_survives = ram_verdict.survival(vm.name, result.verdict, vm.ram, persistent_paths, mounts)
    if not result.verdict.ok:
        result.reasons.extend("RAM would be lost: %s" % reason for reason in result.verdict.reasons)
        result.fixes.append(ram_verdict.FIX_RAM % {"vm": vm.name})
    if vm.qmp is None:
        result.reasons.append("no unix QMP monitor (%s)" % ("; ".join(vm.qmp_problems) or "none configured"))
        result.fixes.append("start %s with -qmp unix:PATH,server=on,wait=off" % vm.name)
        return result
    try:
        with QmpSession(vm.qmp.path, vm.name) as session:
            result.qemu_version = qemu_version(session)
            result.status = run_status(session)
            result.machine_type = resolved_machine_type(session)
            major, minor = (int(part) for part in result.qemu_version.split(".")[:2])
            if (major, minor) < CPR_REBOOT_SINCE:
                result.reasons.append("QEMU %s has no cpr-reboot; it needs 8.2 or later" % result.qemu_version)
            else:
                result.blockers = read_blockers(session)
                result.reasons.extend("QEMU blocks cpr-reboot: %s" % blocker for blocker in result.blockers)
                if result.blockers:
                    result.fixes.append("remove what QEMU names from %s, or leave it out with vms" % vm.name)
                _assess_suspend(result, session, suspend_policy)
    except QmpError as exc:
        result.reasons.append(str(exc.message))
        result.fixes.append(exc.fix or "check the QMP socket of %s" % vm.name)
        return result
    if result.status not in SAVABLE_STATES + (INTERRUPTED_SAVE_STATES if interrupted_save else ()):
        result.reasons.append("run state is %s; only a running or paused VM can be saved" % result.status)
        result.fixes.append("wait until %s is running or paused" % vm.name)
    if check_outdated:
        result.outdated = outdated_reason(vm, result.qemu_version)
    if result.outdated and result.machine_type:
        _probe_installed_qemu(result)
    result.ready = not result.reasons
    return result
