# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Save the VMs of a host with cpr-reboot: all checked first, then all at once.

Order per VM, each step only after the one before it is safe:
journal record on disk -> migrate to the state file -> fsync and hash ->
quit -> process gone -> phase `saved`. A save that fails before `quit`
resumes the VM and keeps the partial file apart, so it never passes for a
good one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ansible_collections.liveupdate.cpr.plugins.module_utils import (
    boot_token,
    guest_agent,
    migration,
    qemu_argv,
    ram_verdict,
    readiness,
)
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.concurrency import run_each, run_per_vm, summary
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import check_name, running_qemus, wait_gone
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import (
    CprError,
    JournalError,
    NotReadyError,
    QmpError,
    SaveError,
    carrying,
)
from ansible_collections.liveupdate.cpr.plugins.module_utils.paths import is_under
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import QmpSession
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import Scope, select
from ansible_collections.liveupdate.cpr.plugins.module_utils.version import COLLECTION_VERSION

PARTIAL_SUFFIX = ".partial"
SUSPEND_SECONDS = 60.0
# Device state is about 300 KB; leave room for it and for the journal.
DEVICE_STATE_ALLOWANCE = 8 << 20
FREE_SPACE_MARGIN = 64 << 20


@dataclass
class SaveOptions:
    qmp_dir: Optional[str] = None
    vms: Sequence[str] = ()
    state_dir: str = jr.DEFAULT_STATE_DIR
    reboot_method: str = "kexec"
    ram_policy: str = "fail"
    ram_policy_per_vm: Dict[str, str] = field(default_factory=dict)
    persistent_paths: Sequence[str] = ()
    timeout: float = 600.0
    check_mode: bool = False
    guest_suspend: str = "auto"
    guest_suspend_per_vm: Dict[str, str] = field(default_factory=dict)
    # recorded with each save: the boot unit, which has no Ansible to ask, sets the clocks by it
    guest_time_sync: str = "auto"
    guest_time_sync_per_vm: Dict[str, str] = field(default_factory=dict)

    def policy_for(self, vm: str) -> str:
        return self.ram_policy_per_vm.get(vm, self.ram_policy)

    def suspend_policy_for(self, vm: str) -> str:
        return self.guest_suspend_per_vm.get(vm, self.guest_suspend)

    def time_sync_for(self, vm: str) -> str:
        return guest_agent.policy_of(vm, self.guest_time_sync, self.guest_time_sync_per_vm)


def check_state_dir(journal: jr.Journal, check_mode: bool) -> None:
    if not check_mode:
        journal.ensure()
        return
    parent = journal.state_dir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise JournalError("state dir %s is not writable." % journal.state_dir,
                           fix="choose a state_dir on a local, writable filesystem that root owns.")


def assess_all(vms: Sequence[Any], opts: SaveOptions, check_outdated: bool = False,
               records: Optional[Mapping[str, Dict[str, Any]]] = None) -> List[readiness.Readiness]:
    """records: the journal's, so that a VM whose save was interrupted is judged as vm_save will find it."""
    mounts = ram_verdict.read_mounts()
    outcomes = run_each(list(vms), lambda vm: readiness.assess(
        vm, opts.reboot_method, opts.policy_for(vm.name), opts.persistent_paths, mounts, check_outdated,
        opts.suspend_policy_for(vm.name), interrupted_save=(records or {}).get(vm.name, {}).get("phase") == jr.SAVING))
    results = []
    for _vm, outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
        results.append(outcome)
    return results


def preflight(ready: Sequence[readiness.Readiness], journal: jr.Journal, check_mode: bool) -> None:
    """Refuse the whole host, before any VM is paused, if any VM may not be saved."""
    problems = vm_problems(ready)
    if problems:
        raise NotReadyError("nothing was paused, because: %s." % " | ".join(problems),
                            vm=next((r.vm.name for r in ready if not r.ready), None),
                            fix="; ".join(fix for r in ready for fix in r.fixes) or "make the ranges disjoint with offset=.",
                            not_ready={r.vm.name: r.reasons for r in ready if r.reasons})
    needed = sum(estimated_state_size(r) for r in ready) + FREE_SPACE_MARGIN
    if not check_mode or os.path.isdir(journal.state_dir):
        free = journal.free_bytes() if os.path.isdir(journal.state_dir) else needed
        if free < needed:
            raise NotReadyError("state dir %s has %d MiB free, the saves need about %d MiB." % (
                journal.state_dir, free >> 20, needed >> 20), fix="free space there or choose another state_dir.")


def vm_problems(ready: Sequence[readiness.Readiness]) -> List[str]:
    """Why VMs may not be saved, one line per VM (empty when all may)."""
    problems = ["%s: %s" % (r.vm.name, "; ".join(r.reasons)) for r in ready if not r.ready]
    overlaps = ram_verdict.overlapping_ranges({r.vm.name: r.vm.ram for r in ready})
    problems.extend("RAM ranges overlap: %s" % overlap for overlap in overlaps)
    return problems


def estimated_state_size(ready: readiness.Readiness) -> int:
    ram = sum(b.size or 0 for b in ready.vm.ram)
    saves_ram = ready.verdict is not None and not ready.verdict.x_ignore_shared
    return DEVICE_STATE_ALLOWANCE + (ram if saves_ram else 0)


def socket_dir_of(path: str) -> Dict[str, Any]:
    """Mode and owner of the QMP socket's directory: one under /run is gone after the reboot, and is recreated."""
    try:
        info = os.stat(os.path.dirname(path))
    except OSError:
        return {}
    return {"dir_mode": stat.S_IMODE(info.st_mode), "dir_uid": info.st_uid, "dir_gid": info.st_gid}


def new_record(ready: readiness.Readiness, journal: jr.Journal, guest_time_sync: str) -> Dict[str, Any]:
    vm = ready.vm
    if ready.verdict is None or vm.qmp is None or ready.machine_type is None:
        raise NotReadyError("was not fully assessed before its save.", vm=vm.name)
    return {
        "vm": vm.name, "host": socket.gethostname(), "pid": vm.pid,
        # the boot a save belongs to: a resumed rollout tells "rebooted since" from "not yet"
        "boot_id": jr.boot_id(), "kernel": os.uname().release,
        "argv": vm.argv,
        "launch_argv": qemu_argv.pin_machine_type(qemu_argv.without_incoming(vm.argv), ready.machine_type),
        "cwd": vm.cwd, "environ": vm.environ, "uid": vm.uid, "gid": vm.gid,
        "binary": vm.binary, "qemu_version": ready.qemu_version, "machine_type": ready.machine_type,
        "qmp": dict(socket_dir_of(vm.qmp.path), path=vm.qmp.path, form=vm.qmp.form),
        "state_file": journal.state_path(vm.name), "ram_policy": ready.verdict.policy,
        "mode": ready.verdict.mode, "x_ignore_shared": ready.verdict.x_ignore_shared,
        "reboot_method": ready.verdict.reboot_method, "ram_survives": ready.ram_survives,
        "collection_version": COLLECTION_VERSION,
        "ram_backends": [b.as_dict() for b in vm.ram], "run_state_at_save": ready.status,
        "supervisor": vm.supervisor.as_dict(), "error": None, "timestamps": {}, "suspend_reason": ready.suspend,
        "guest_time_sync": guest_time_sync,
    }


def public_view(record: Dict[str, Any], action: str) -> Dict[str, Any]:
    """A journal record as modules return it: no environment values, argv redacted."""
    view = {key: value for key, value in record.items() if key not in ("environ", "argv", "launch_argv")}
    view["argv"] = qemu_argv.redact(record.get("launch_argv", []))
    view["action"] = action
    return view


def wake_guest(session: QmpSession, timeout: float = SUSPEND_SECONDS) -> None:
    """system_wakeup for a guest suspended to RAM, and wait (bounded) until QEMU says it left ``suspended``."""
    session.execute("system_wakeup")
    session.wait_for(lambda s: readiness.run_status(s) != "suspended", timeout, what="the guest to wake")


def _resume_after_failure(session: QmpSession, record: Dict[str, Any]) -> str:
    """Leave the VM as it was before the save: running if it ran, awake if we suspended it, in normal mode."""
    status = readiness.run_status(session)
    if record.get("suspended_by_engine") and status == "suspended":
        wake_guest(session)
        status = readiness.run_status(session)
    if record["run_state_at_save"] == "running" and status != "running":
        session.execute("cont")
        status = readiness.run_status(session)
    migration.set_normal_mode(session)
    return status


def _set_aside_partial(state_file: str) -> Optional[str]:
    if not os.path.exists(state_file):
        return None
    os.rename(state_file, state_file + PARTIAL_SUFFIX)
    return state_file + PARTIAL_SUFFIX


def _record_failure(journal: jr.Journal, record: Dict[str, Any], error: str, status: str,
                    partial: Optional[str]) -> Optional[str]:
    """Journal a failed save; when the disk is too full even for that (another writer filled it), the partial
    state file of a VM that is back as it was goes first, to make room. The partial file's path, if kept."""
    try:
        journal.set_phase(record, jr.SAVE_FAILED, error=error, status_after_failure=status, partial_state_file=partial)
        return partial
    except JournalError:
        if partial is None or status != record.get("run_state_at_save"):
            raise
    os.unlink(partial)
    journal.set_phase(record, jr.SAVE_FAILED, error=error, status_after_failure=status, partial_state_file=None,
                      partial_state_file_removed="to make room for this record on a full state disk")
    return None


def suspend_guest(session: QmpSession, record: Dict[str, Any], journal: jr.Journal) -> Dict[str, Any]:
    """Suspend the guest to RAM through its agent, and wait (bounded) for QEMU to say it is suspended."""
    path, unreachable = guest_agent.agent_path(record["argv"])
    if path is None:
        raise SaveError("its guest must be suspended, and its agent is out of reach: %s." % unreachable, vm=record["vm"])
    # journaled first: a failure from here on must wake it
    record = journal.write(dict(record, suspended_by_engine=True))
    asked = jr.now()
    with guest_agent.GuestAgent(path, record["vm"]) as agent:
        agent.send_without_reply("guest-suspend-ram")

        def suspended(s: QmpSession) -> bool:
            refused = agent.failure()
            if refused:
                raise SaveError("the guest agent refused guest-suspend-ram: %s" % refused, vm=record["vm"],
                                fix="check that the guest supports suspend to RAM (mem in /sys/power/state).")
            return readiness.run_status(s) == "suspended"
        session.wait_for(suspended, SUSPEND_SECONDS, 0.05, what="the guest to suspend itself", wake_on_events=True)
    suspended_at = session.last_event_time("SUSPEND") or jr.now()
    return journal.write(dict(record, suspended_at=suspended_at, suspend_seconds=round(suspended_at - asked, 6)))


def save_one(ready: readiness.Readiness, journal: jr.Journal, timeout: float, guest_time_sync: str = "auto"
             ) -> Dict[str, Any]:
    """Save one ready VM; the journal record is on disk before the VM pauses. ``guest_time_sync``: the clock policy
    of its resume, kept in the record for a restore that has no options of its own (the boot unit)."""
    vm = ready.vm
    record = journal.set_phase(new_record(ready, journal, guest_time_sync), jr.SAVING)
    state_file = record["state_file"]
    with QmpSession(record["qmp"]["path"], vm.name) as session:
        try:
            if record.get("suspend_reason"):
                record = suspend_guest(session, record, journal)
            migration.set_cpr_mode(session, record["x_ignore_shared"])
            started = jr.now()
            info = migration.save_to(session, state_file, timeout)
            if info.get("status") != "completed":
                raise SaveError("QEMU's migration ended %s: %s" % (info.get("status"), info.get("error-desc", "no reason given")),
                                vm=vm.name)
            status = migration.run_status_after_save(session)
            if status != "postmigrate":
                raise SaveError("after the migration the VM is %s, not postmigrate." % status, vm=vm.name)
            jr.fsync_path(state_file)
            # a suspended guest stopped serving at its SUSPEND, and QEMU sends no STOP for it
            paused_at = record.get("suspended_at") or session.last_event_time("STOP") or started
            journal.write(dict(record, state_sha256=jr.sha256_of(state_file), state_size=os.path.getsize(state_file),
                               state_complete=True, paused_at=paused_at,
                               save_seconds=round(jr.now() - paused_at, 6)))
            record = journal.read(vm.name) or record
        except (CprError, OSError) as exc:
            # an I/O error on the state file after the migration must resume the VM as any other failure does
            failure = exc if isinstance(exc, CprError) else SaveError(
                "the state file %s: %s" % (state_file, exc), vm=vm.name)
            try:
                status = _resume_after_failure(session, record)
            except QmpError as resume_exc:
                status = "unknown (%s)" % resume_exc.message
            partial = _record_failure(journal, record, failure.message, status, _set_aside_partial(state_file))
            raise SaveError("save failed and the VM was left %s: %s" % (status, failure.message), vm=vm.name,
                            fix="fix the cause QEMU names; the VM keeps running, nothing was lost.",
                            partial_state_file=partial, qemu_message=getattr(failure, "qemu_message", None)) from exc
        session.quit()
    if not wait_gone(vm.pid, 30):
        raise SaveError("QEMU pid %d did not exit after quit; its state file is complete." % vm.pid, vm=vm.name,
                        fix="check the process; once it is gone, vm_restore can bring the VM back.")
    return journal.set_phase(record, jr.SAVED)


def resume_interrupted(vm: Any, record: Dict[str, Any], journal: jr.Journal) -> Dict[str, Any]:
    """A save whose task died before its QEMU quit (a killed controller, or a killed module): the VM is still here,
    perhaps mid-migration, paused after it, or suspended by us. Cancel the migration, put the VM back as it was and
    set the unfinished file aside, so it is saved afresh; its journal says what happened."""
    with QmpSession(vm.qmp.path, vm.name) as session:
        if migration.in_progress(session):
            session.execute("migrate_cancel")
            migration.result(session, SUSPEND_SECONDS)
        status = _resume_after_failure(session, record)
    partial = _set_aside_partial(record["state_file"])
    return journal.set_phase(record, jr.SAVE_FAILED, status_after_failure=status, partial_state_file=partial,
                             error="the save was interrupted before QEMU quit (its task died: a killed controller or "
                                   "module); the next save found the VM %s, and left it %s." % (
                                       record.get("run_state_at_save"), status))


def resume_interrupted_saves(running: Sequence[Any], records: Dict[str, Dict[str, Any]], journal: jr.Journal) -> None:
    """resume_interrupted for each running VM whose record says its save was under way; records updated."""
    for vm in running:
        if records.get(vm.name, {}).get("phase") == jr.SAVING:
            records[vm.name] = resume_interrupted(vm, records[vm.name], journal)


def finish_interrupted(record: Dict[str, Any], journal: jr.Journal) -> Optional[Dict[str, Any]]:
    """A save that hashed its state file and then lost its task is a save."""
    if record.get("phase") == jr.SAVING and record.get("state_complete"):
        return journal.set_phase(record, jr.SAVED)
    if record.get("phase") == jr.SAVING:
        raise SaveError("the journal says a save was under way, but QEMU is gone and the state file is incomplete.",
                        vm=record["vm"],
                        fix="the guest is lost unless its QEMU is found; inspect %s." % journal.record_path(record["vm"]))
    return None


def check_running(running: Mapping[str, Any], records: Mapping[str, Dict[str, Any]], journal: jr.Journal) -> None:
    """Running VMs whose unrestored saves the journal holds, or whose names cannot name a state file, are refused."""
    conflicts = [name for name in running if records.get(name, {}).get("phase") in jr.AWAITING_RESTORE]
    if conflicts:
        raise NotReadyError("%s run, but the journal holds their unrestored saves." % ", ".join(conflicts), vm=conflicts[0],
                            fix="restore them with vm_restore; if they were cold-booted on purpose, move their .json and "
                                ".state files out of %s first." % journal.state_dir)
    for name in running:
        check_name(name)


def save_host(opts: SaveOptions) -> Dict[str, Any]:
    journal = jr.Journal(opts.state_dir)
    check_state_dir(journal, opts.check_mode)
    with contextlib.nullcontext() if opts.check_mode else journal.vms_lock(opts.timeout):
        records = {r["vm"]: r for r in journal.records()}
        scope = select(opts.qmp_dir, opts.vms, records)
        with carrying(scope.secrets):
            result = _save_in_scope(opts, journal, records, scope)
    return dict(result, secrets=scope.secrets)


def _save_in_scope(opts: SaveOptions, journal: jr.Journal, records: Dict[str, Dict[str, Any]], scope: Scope
                   ) -> Dict[str, Any]:
    running = scope.by_name()
    results: List[Dict[str, Any]] = []
    for name, record in sorted(records.items()):
        if name in running or (opts.vms and name not in opts.vms):
            continue
        if record.get("phase") in jr.AWAITING_RESTORE or record.get("phase") == jr.SAVING:
            finished = record if opts.check_mode else finish_interrupted(record, journal) or record
            if opts.qmp_dir is None or opts.vms or is_under(str(record.get("qmp", {}).get("path", "")), opts.qmp_dir):
                results.append(public_view(finished, "already_saved"))
    check_running(running, records, journal)
    if not opts.check_mode:
        resume_interrupted_saves([running[name] for name in sorted(running)], records, journal)
    # outdated: the QEMU its restore starts is another binary, which must take it before anything pauses (probe.py)
    ready = assess_all(list(running.values()), opts, check_outdated=True, records=records)
    preflight(ready, journal, opts.check_mode)
    if opts.check_mode:
        plan = [dict(r.as_dict(), action="would_save", mode=r.verdict.mode if r.verdict else None) for r in ready]
        return {"changed": bool(plan), "vms": plan + results, "warnings": scope.warnings}
    done, failures = run_per_vm(ready, lambda r: save_one(r, journal, opts.timeout, opts.time_sync_for(r.vm.name)),
                                lambda r: r.vm.name)
    results.extend(public_view(record, "saved") for _ready, record in done)
    changed = bool(done)
    if failures:
        raise SaveError("%d of %d VMs failed to save; those were left running: %s." % (
            len(failures), len(ready), summary(failures)),
            vm=failures[0]["vm"], fix="see each VM's error; do not reboot this host until every VM is saved.",
            failures=failures, vms=results, changed=changed)
    # the whole host is saved, no QEMU of any scope left running: its planned kexec may now prove itself (boot_token)
    armed = not running_qemus() and boot_token.arm(journal.state_dir)
    return {"changed": changed, "vms": results, "warnings": scope.warnings, "restore_token_armed": armed}
