# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bring saved VMs back from the journal.

Per VM: the state file's sha256 is checked before QEMU starts; QEMU starts
with the recorded argv (machine type pinned) plus ``-incoming defer``;
``migrate-incoming`` runs with exit-on-error off, so a failed load leaves
QEMU alive with QEMU's reason readable. The state file is deleted only
once the VM is verified running.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ansible_collections.liveupdate.cpr.plugins.module_utils import (
    boot_token,
    guest_agent,
    migration,
    qemu_argv,
    ram_verdict,
    readiness,
)
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.concurrency import run_per_vm, summary
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import (
    QemuProcess,
    process_exists,
    running_qemus,
    wait_gone,
)
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError, RestoreError, ScopeError, carrying
from ansible_collections.liveupdate.cpr.plugins.module_utils.launcher import DEFAULT_LAUNCH_TIMEOUT, Launched, launch
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import DEFAULT_CONNECT_TIMEOUT, QmpSession
from ansible_collections.liveupdate.cpr.plugins.module_utils.save import public_view, wake_guest
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import secrets_of

# What a QEMU that loaded its guest can be in, before the restore that launched it resumed it.
ADOPTABLE_STATES = ("running", "paused", "suspended")
RESTORED_BY_ANSIBLE = "ansible"
RESTORED_BY_BOOT_UNIT = "boot unit"


@dataclass
class RestoreOptions:
    vms: Sequence[str] = ()
    state_dir: str = jr.DEFAULT_STATE_DIR
    keep_state: bool = False
    timeout: float = 600.0
    check_mode: bool = False
    restored_by: str = RESTORED_BY_ANSIBLE
    # per VM, in its own thread, just before its QEMU starts; raises to leave that VM saved (the boot unit's waits)
    before_launch: Optional[Callable[[Dict[str, Any]], None]] = None
    guest_time_sync: str = "auto"
    guest_time_sync_per_vm: Dict[str, str] = field(default_factory=dict)


def check_ram_survived(record: Dict[str, Any], proof: boot_token.BootProof, boot: str) -> None:
    """Refuse to resume a guest from RAM that this boot may have wiped."""
    needs = ram_verdict.recorded_survival(record)
    if needs in ram_verdict.NEEDS_NO_PROOF or record.get("boot_id") == boot:
        return
    if needs == ram_verdict.SURVIVES_KEXEC and proof.planned:
        return
    kept = "only a kexec" if needs == ram_verdict.SURVIVES_KEXEC else "only a QEMU restart without a reboot"
    raise RestoreError(
        "its RAM (%s) survives %s, and this boot is not the planned kexec: %s. Its RAM may be lost, so QEMU was not "
        "started; the state file and journal are kept." % (
            ", ".join(str(b.get("mem_path")) for b in record.get("ram_backends", []) if b.get("mem_path")) or "shared",
            kept, proof.reason), vm=record["vm"],
        fix="if the host crashed or was power-cycled, the guest's memory is gone: a cold boot of the guest is the "
            "operator's call (its disks are as it left them); then move %s.json and %s.state out of the state dir. "
            "Never restore it from this state file." % (record["vm"], record["vm"]))


def verify_state_file(record: Dict[str, Any]) -> None:
    state_file = record["state_file"]
    if not os.path.exists(state_file):
        raise RestoreError("state file %s is missing." % state_file, vm=record["vm"],
                           fix="the saved device state is gone; the guest cannot be resumed from it.")
    digest = jr.sha256_of(state_file)
    if digest != record.get("state_sha256"):
        raise RestoreError("state file %s does not match its journal record (sha256 %s, recorded %s); QEMU was not started." % (
            state_file, digest[:16], str(record.get("state_sha256"))[:16]), vm=record["vm"],
            fix="find the intact state file; a changed one would load the wrong device state.")
    if record.get("x_ignore_shared"):
        missing = [b["mem_path"] for b in record.get("ram_backends", [])
                   if b.get("mem_path") and not os.path.exists(b["mem_path"])]
        if missing:
            raise RestoreError("guest RAM backing %s is missing; QEMU was not started." % ", ".join(missing), vm=record["vm"],
                               fix="bring the persistent memory back (e.g. ndctl create-namespace) before restoring.")


def is_same_vm(vm: Any, record: Dict[str, Any]) -> bool:
    """A running QEMU is the journal's VM when name and QMP socket both match: two state
    dirs (or two qmp_dirs) may each have a VM of the same name."""
    return bool(vm.name == record["vm"] and vm.qmp is not None
                and os.path.realpath(vm.qmp.path) == os.path.realpath(record["qmp"]["path"]))


def _left_behind(record: Dict[str, Any], timeout: float) -> Optional[QemuProcess]:
    """The QEMU an earlier restore of this VM left, when it holds the loaded guest; None once there is none.

    A failed load leaves QEMU waiting, holding no guest state: it is quit, to make room for a fresh try. A restore
    whose task died (a killed controller or module) may leave QEMU still loading, or loaded and not yet resumed:
    its load is awaited, and a loaded VM is adopted, to be finished as restore_one would have."""
    for vm in running_qemus():
        if not is_same_vm(vm, record) or vm.qmp is None:
            continue
        with QmpSession(vm.qmp.path, vm.name) as session:
            status = readiness.run_status(session)
            if status == "inmigrate" and migration.in_progress(session):
                migration.result(session, timeout)
                status = readiness.run_status(session)
            if record.get("phase") == jr.RESTORING and status in ADOPTABLE_STATES:
                return vm
            if status not in ("inmigrate", "postmigrate", "shutdown"):
                raise RestoreError("a QEMU named %s already runs (pid %d) and is %s." % (vm.name, vm.pid, status),
                                   vm=vm.name,
                                   fix="if that VM is the restored one, its journal will be updated by the next "
                                       "vm_restore.")
            session.quit()
        wait_gone(vm.pid, 30)
    return None


def _wake_if_suspended(session: QmpSession, record: Dict[str, Any]) -> Optional[float]:
    """system_wakeup for a guest that vm_save suspended to RAM (QEMU loads it suspended): the seconds from the
    command to QEMU's WAKEUP, a part of the guest's blackout; None when it was not suspended."""
    if not record.get("suspended_by_engine"):
        return None
    status = session.wait_for(_settled_status, 30, what="the loaded VM to leave inmigrate")
    if status != "suspended":
        return None
    asked = jr.now()
    wake_guest(session, 30)
    return round(max(0.0, (session.last_event_time("WAKEUP") or jr.now()) - asked), 6)


def _settled_status(session: QmpSession) -> Optional[str]:
    status = readiness.run_status(session)
    return None if status == "inmigrate" else status


def restore_one(record: Dict[str, Any], journal: jr.Journal, keep_state: bool, timeout: float,
                restored_by: str = RESTORED_BY_ANSIBLE) -> Dict[str, Any]:
    verify_state_file(record)
    adopted = _left_behind(record, timeout) if record.get("phase") in (jr.RESTORING, jr.RESTORE_FAILED) else None
    record = journal.set_phase(record, jr.RESTORING, error=None)
    argv = qemu_argv.with_incoming_defer(record["launch_argv"])
    started: Optional[Launched] = None
    try:
        # a QEMU that is alive but slow to serve its socket (a host still booting, or busy) is no failure: wait the
        # restore's time; the launcher still fails at once when QEMU exits
        launch_timeout = max(DEFAULT_LAUNCH_TIMEOUT, timeout)
        if adopted is None:
            started = launch(record, argv, journal.log_path(record["vm"]), timeout=launch_timeout,
                             early_boot=restored_by == RESTORED_BY_BOOT_UNIT)
        # a QEMU this call just started greets once it is up, which on a host still booting (the boot unit) or
        # busy can take far longer than the 10 s that tell a monitor held by another client: wait the restore's time
        # as long as that QEMU lives: one that served its socket and then exited (a client chardev whose peer is
        # away) fails the restore at once
        greeting = max(DEFAULT_CONNECT_TIMEOUT, timeout) if started is not None else DEFAULT_CONNECT_TIMEOUT
        with QmpSession(record["qmp"]["path"], record["vm"], connect_timeout=greeting,
                        server_pid=started.pid if started is not None else None) as session:
            if started is not None:
                migration.set_cpr_mode(session, record["x_ignore_shared"])
                info = migration.load_from(session, record["state_file"], timeout)
                if info.get("status") != "completed":
                    raise RestoreError("QEMU could not load the saved state: %s" % info.get(
                        "error-desc", info.get("status")), vm=record["vm"], qemu_message=info.get("error-desc"),
                        fix="QEMU (pid %d) was left running to show the error; the state file and journal are kept. "
                            "Fix the cause and run vm_restore again." % started.pid)
            wake_seconds = _wake_if_suspended(session, record)
            status = readiness.run_status(session)
            if record.get("run_state_at_save") == "running" and status != "running":
                session.execute("cont")
            want = "running" if record.get("run_state_at_save") == "running" else "paused"
            session.wait_for(lambda s: readiness.run_status(s) == want, 30, what="the VM to be %s" % want)
            # a guest the save suspended serves again from its WAKEUP, not from QEMU's RESUME
            resumed_at = (wake_seconds is not None and session.last_event_time("WAKEUP")) \
                or session.last_event_time("RESUME") or jr.now()
            # after the resume, so not in the blackout: the QEMU the VM runs now, in its own words
            restored_version = readiness.qemu_version(session)
    except CprError as exc:
        if started is not None and not process_exists(started.pid):
            # QEMU served its monitor, then exited (an argument it could not honour this boot): say what it said
            exc.message = "%s; QEMU (pid %d) exited: %s" % (exc.message, started.pid, started.output() or "no output")
        journal.set_phase(record, jr.RESTORE_FAILED, error=exc.message,
                          pid=started.pid if started else None, launch=started.as_dict() if started else None)
        raise
    pid = started.pid if started is not None else adopted.pid if adopted is not None else 0
    if not process_exists(pid):
        raise RestoreError("QEMU pid %d exited right after its restore." % pid, vm=record["vm"])
    kept = record["state_file"] if keep_state else None
    if not keep_state:
        os.unlink(record["state_file"])
    paused_at = record.get("paused_at") or resumed_at
    launched = started.as_dict() if started is not None else record.get("launch")
    return journal.set_phase(record, jr.RESTORED, pid=pid, launch=launched, resumed_at=resumed_at,
                             adopted_from_interrupted_restore=adopted is not None,
                             blackout_seconds=round(resumed_at - paused_at, 6), kept_state_file=kept,
                             restored_by=restored_by, restored_boot_id=jr.boot_id(),
                             restored_qemu_version=restored_version, wake_seconds=wake_seconds)


def set_guest_clock(record: Dict[str, Any], journal: jr.Journal, default_policy: str,
                    per_vm: Mapping[str, str]) -> Dict[str, Any]:
    """Step a resumed guest's clock to the host's; the outcome goes into its journal record."""
    clock = guest_agent.sync_clock(record.get("launch_argv") or [], record["vm"],
                                   guest_agent.policy_of(record["vm"], default_policy, per_vm))
    return journal.write(dict(record, guest_clock=clock.as_dict()))


def check_required_clocks(records: Sequence[Dict[str, Any]], results: List[Dict[str, Any]], changed: bool) -> None:
    """guest_time_sync=required: a clock that could not be set fails the report; the VM keeps running."""
    unset = [r for r in records if (r.get("guest_clock") or {}).get("policy") == "required"
             and not r["guest_clock"].get("synced")]
    if unset:
        raise guest_agent.GuestAgentError(
            "%d VM(s) run again, but their clocks could not be set (guest_time_sync=required): %s." % (
                len(unset), "; ".join("%s: %s" % (r["vm"], r["guest_clock"].get("reason")) for r in unset)),
            vm=unset[0]["vm"], vms=results, changed=changed,
            fix="the VMs are running; start qemu-guest-agent in each guest (and give the VM an agent channel: "
                "-chardev socket,id=qga0,path=...,server=on,wait=off -device virtio-serial-pci "
                "-device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0), then run vm_restore again, "
                "which sets the clocks of the VMs it restored in this boot.")


def restore_host(opts: RestoreOptions) -> Dict[str, Any]:
    journal = jr.Journal(opts.state_dir)
    if opts.check_mode or not os.path.isdir(journal.state_dir):
        return _restore_unlocked(opts, journal)
    # the boot unit may be restoring right now: wait for it, then see what it left
    with journal.vms_lock(opts.timeout):
        return _restore_unlocked(opts, journal)


def _restore_unlocked(opts: RestoreOptions, journal: jr.Journal) -> Dict[str, Any]:
    records = {r["vm"]: r for r in journal.records()}
    qemus = running_qemus()
    secrets = secrets_of(qemus, records.values())
    with carrying(secrets):
        result = _restore_records(opts, journal, records, qemus)
    return dict(result, secrets=secrets)


def _restore_records(opts: RestoreOptions, journal: jr.Journal, records: Dict[str, Dict[str, Any]],
                     qemus: Sequence[QemuProcess]) -> Dict[str, Any]:
    unknown = [name for name in opts.vms if name not in records]
    if unknown:
        raise ScopeError("the journal in %s has no record of %s. It has: %s." % (
            opts.state_dir, ", ".join(unknown), ", ".join(sorted(records)) or "nothing"),
            vm=unknown[0], fix="check vms and state_dir.")
    chosen = [records[name] for name in sorted(records) if not opts.vms or name in opts.vms]
    running = {record["vm"]: vm.pid for record in chosen for vm in qemus if is_same_vm(vm, record)}
    results: List[Dict[str, Any]] = []
    todo: List[Dict[str, Any]] = []
    # their clocks are set again: the boot unit set them from a host clock fresh from the RTC, and by now the host's
    # own may be synced; a rerun after a failed guest_time_sync=required tries again
    resumed_this_boot: List[Dict[str, Any]] = []
    boot = jr.boot_id()
    for record in chosen:
        phase = record.get("phase")
        resumed_here = record["vm"] in running and record.get("restored_boot_id") == boot
        if phase == jr.RESTORED and resumed_here and not opts.check_mode:
            resumed_this_boot.append(record)
        elif phase in (jr.RESTORED, jr.SAVE_FAILED):
            results.append(public_view(record, _action_of_finished(record)))
        elif phase == jr.SAVING:
            raise RestoreError("the journal says a save was under way and never finished.", vm=record["vm"],
                               fix="run vm_save again first; it finishes or explains the interrupted save.")
        elif record["vm"] in running and phase not in (jr.RESTORING, jr.RESTORE_FAILED):
            raise RestoreError("a QEMU named %s already runs (pid %d) while its journal says %s." % (
                record["vm"], running[record["vm"]], phase), vm=record["vm"],
                fix="if that VM was cold-booted on purpose, move its .json and .state files out of %s." % opts.state_dir)
        else:
            todo.append(record)
    proof = boot_token.prove(journal.state_dir) if todo else boot_token.BootProof(False, "nothing to restore")
    if opts.check_mode:
        for record in todo:
            check_ram_survived(record, proof, boot)
            verify_state_file(record)
            results.append(public_view(record, "would_restore"))
        return {"changed": bool(todo), "vms": results}
    if proof.planned:
        boot_token.consume(journal.state_dir, opts.restored_by, boot)

    def set_clock(record: Dict[str, Any]) -> Dict[str, Any]:
        return set_guest_clock(record, journal, opts.guest_time_sync, opts.guest_time_sync_per_vm)

    def restore_checked(record: Dict[str, Any]) -> Dict[str, Any]:
        check_ram_survived(record, proof, boot)
        if opts.before_launch is not None:
            opts.before_launch(record)
        return set_clock(restore_one(record, journal, opts.keep_state, opts.timeout, opts.restored_by))

    done, failures = run_per_vm(todo, restore_checked, lambda r: str(r["vm"]))
    resynced, unwritten = run_per_vm(resumed_this_boot, set_clock, lambda r: str(r["vm"]))
    failures += unwritten
    results.extend(public_view(record, _action_of_finished(record)) for _found, record in resynced)
    results.extend(public_view(record, "restored") for _saved, record in done)
    changed = bool(done)
    if failures:
        raise RestoreError("%d of %d VMs failed to restore; their state files and journal records are kept: %s." % (
            len(failures), len(todo) + len(unwritten), summary(failures)),
            vm=failures[0]["vm"], fix="see each VM's error, fix it and run vm_restore again.",
            failures=failures, vms=results, changed=changed)
    check_required_clocks([record for _item, record in resynced + done], results, changed)
    return {"changed": changed, "vms": results}


def _action_of_finished(record: Dict[str, Any]) -> str:
    if record.get("phase") == jr.SAVE_FAILED:
        return "not_saved"
    if record.get("restored_by") == RESTORED_BY_BOOT_UNIT and record.get("restored_boot_id") == jr.boot_id():
        return "restored_at_boot"
    return "already_running"
