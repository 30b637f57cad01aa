# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A QEMU-only update in one call: save, quit, start the installed binary, load.

Each VM goes through the whole cycle in its own thread, so its blackout is
the save, the QEMU start and the load, never an Ansible round trip.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, List

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.concurrency import run_per_vm, summary
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import check_name
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError, NotReadyError, carrying
from ansible_collections.liveupdate.cpr.plugins.module_utils.readiness import Readiness
from ansible_collections.liveupdate.cpr.plugins.module_utils.restore import check_required_clocks, restore_one, set_guest_clock
from ansible_collections.liveupdate.cpr.plugins.module_utils.save import (
    SaveOptions,
    assess_all,
    check_state_dir,
    preflight,
    public_view,
    resume_interrupted_saves,
    save_one,
)
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import Scope, select


@dataclass
class RelaunchOptions(SaveOptions):
    force: bool = False
    keep_state: bool = False


def _cycle(ready: Readiness, journal: jr.Journal, opts: RelaunchOptions) -> Dict[str, Any]:
    record = save_one(ready, journal, opts.timeout, opts.time_sync_for(ready.vm.name))
    restored = restore_one(record, journal, opts.keep_state, opts.timeout)
    return set_guest_clock(restored, journal, opts.guest_time_sync, opts.guest_time_sync_per_vm)


def relaunch_host(opts: RelaunchOptions) -> Dict[str, Any]:
    if opts.reboot_method != "none":
        # the RAM verdict of another method would judge a reboot this module never makes
        raise CprError("vm_relaunch only restarts QEMU, so reboot_method=%s does not apply." % opts.reboot_method,
                       fix="leave reboot_method out (or set it to none); to reboot into a new kernel, use vm_save, "
                           "the reboot and vm_restore, as the liveupdate.cpr.liveupdate role does.")
    journal = jr.Journal(opts.state_dir)
    check_state_dir(journal, opts.check_mode)
    with contextlib.nullcontext() if opts.check_mode else journal.vms_lock(opts.timeout):
        records = {r["vm"]: r for r in journal.records()}
        scope = select(opts.qmp_dir, opts.vms, records)
        with carrying(scope.secrets):
            result = _relaunch_in_scope(opts, journal, records, scope)
    return dict(result, secrets=scope.secrets)


def _relaunch_in_scope(opts: RelaunchOptions, journal: jr.Journal, records: Dict[str, Dict[str, Any]], scope: Scope
                       ) -> Dict[str, Any]:
    waiting = [name for name, r in records.items() if r.get("phase") in jr.AWAITING_RESTORE]
    if waiting:
        raise NotReadyError("the journal holds unrestored saves of %s." % ", ".join(sorted(waiting)), vm=sorted(waiting)[0],
                            fix="run vm_restore first; vm_relaunch only cycles running VMs.")
    for vm in scope.running:
        check_name(vm.name)
    if not opts.check_mode:
        resume_interrupted_saves(scope.running, records, journal)
    assessed = assess_all(scope.running, opts, check_outdated=True, records=records)
    results: List[Dict[str, Any]] = []
    chosen = []
    for ready in assessed:
        if opts.force or ready.outdated:
            chosen.append(ready)
        else:
            results.append({"vm": ready.vm.name, "action": "up_to_date", "qemu_version": ready.qemu_version,
                            "binary": ready.vm.binary})
    preflight(chosen, journal, opts.check_mode)
    if opts.check_mode:
        results.extend(dict(r.as_dict(), vm=r.vm.name, action="would_relaunch",
                            reason=r.outdated or "force") for r in chosen)
        return {"changed": bool(chosen), "vms": results, "warnings": scope.warnings}
    done, failures = run_per_vm(chosen, lambda r: _cycle(r, journal, opts), lambda r: r.vm.name)
    # the version each VM runs now, as its new QEMU reports it (the record's qemu_version is the one that saved it)
    results.extend(dict(public_view(record, "relaunched"), reason=ready.outdated or "force",
                        previous_qemu_version=ready.qemu_version,
                        qemu_version=record.get("restored_qemu_version") or ready.qemu_version) for ready, record in done)
    changed = bool(done)
    if failures:
        raise CprError(
            "%d of %d VMs failed to relaunch: %s." % (len(failures), len(chosen), summary(failures)),
            vm=failures[0]["vm"], failures=failures, vms=results, changed=changed,
            fix="a VM whose save failed is still running; one whose restore failed is in the journal: "
                "run vm_restore after fixing the cause.")
    check_required_clocks([record for _ready, record in done], results, changed)
    return {"changed": changed, "vms": results, "warnings": scope.warnings}
