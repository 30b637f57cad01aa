"""The host plan's rules against the hand-written truth table, and the journal's reading."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from engine_fakes import qemu

from ansible_collections.liveupdate.cpr.plugins.module_utils import host_plan
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_packages as qp
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import NotReadyError
from ansible_collections.liveupdate.cpr.plugins.module_utils.readiness import Readiness
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import Scope

TABLE = yaml.safe_load((Path(__file__).parent / "host_plan_table.yml").read_text())
RESULT_COLUMNS = ("action", "reboot")


def _matches(row: Dict[str, Any], case: Dict[str, Any]) -> bool:
    for column, value in case.items():
        wanted = row.get(column, "*")
        if wanted != "*" and value not in (wanted if isinstance(wanted, list) else [wanted]):
            return False
    return True


def _every_case() -> List[Dict[str, Any]]:
    names = list(TABLE["columns"])
    return [dict(zip(names, values)) for values in itertools.product(*TABLE["columns"].values())]


def test_the_table_speaks_of_exactly_the_rules_inputs():
    assert list(TABLE["columns"]) == [f.name for f in fields(host_plan.Situation)]
    assert TABLE["columns"]["journal"] == list(host_plan.JOURNAL_STATES)
    for row in TABLE["rows"]:
        assert set(row) - set(TABLE["columns"]) == set(RESULT_COLUMNS), row
        assert row["action"] in host_plan.ACTIONS, row


def test_every_combination_matches_exactly_one_row_and_decide_agrees():
    cases = _every_case()
    assert len(cases) == 5 * 3 * 2 ** 7
    wrong = []
    for case in cases:
        rows = [row for row in TABLE["rows"] if _matches(row, case)]
        assert len(rows) == 1, "%d rows match %s: %s" % (len(rows), case, rows)
        decision = host_plan.decide(host_plan.Situation(**case))
        if (decision.action, decision.reboot) != (rows[0]["action"], rows[0]["reboot"]):
            wrong.append((case, rows[0], decision))
    assert not wrong, "%d combinations differ, first: %s" % (len(wrong), wrong[0])


@pytest.mark.parametrize(("phases_and_boots", "state"), [
    ([], "empty"),
    ([("restored", "b1"), ("save_failed", "b0")], "done"),
    ([("saved", "b1"), ("restored", "b0")], "this_boot"),
    ([("restore_failed", "b1"), ("restoring", "b1")], "this_boot"),
    ([("saved", "b0")], "earlier_boot"),
    ([("saved", "b0"), ("saved", "b1")], "mixed"),
])
def test_journal_state(phases_and_boots, state):
    records = [{"vm": "vm%d" % n, "phase": phase, "boot_id": boot} for n, (phase, boot) in enumerate(phases_and_boots)]
    assert host_plan.journal_state(records, "b1") == state


@pytest.mark.parametrize(("action", "reboot", "requested", "vm_method"), [
    ("cycle", "kexec", "kexec", "kexec"),
    ("cycle", "reboot", "kexec", "reboot"),          # the firmware-reboot fallback: RAM must survive that
    ("finish_cycle", "refused", "kexec", "kexec"),   # refused anyway; the VMs are still judged for what was asked
    ("relaunch", "none", "kexec", "none"),
    ("restore", "none", "reboot", "none"),
])
def test_the_reboot_each_vms_ram_must_survive(action, reboot, requested, vm_method):
    assert host_plan.vm_reboot_method(host_plan.Decision(action, reboot), requested) == vm_method


# -- plan_host: the situation gathered, the decision checked before anything is paused ---------------------------
def kernel_facts(needed=True, usable=True, target="6.12.1-amd64", available=("6.12.1-amd64",)):
    return {"running": "6.1.0-amd64", "target": target, "needed": needed, "boot_id": "b1", "flavour": "amd64",
            "installed": ["6.1.0-amd64"], "available": list(available),
            "kexec": {"usable": usable, "reasons": [] if usable else ["kernel.kexec_load_disabled is 1"]}}


def planned(tmp_path, monkeypatch, records=(), running=(), unit_status=None, outside=(), **options):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    for record in records:
        journal.write(dict(record, state_file=journal.state_path(record["vm"])))
    kernel = kernel_facts(**options.pop("kernel", {}))
    monkeypatch.setattr(host_plan.kn, "kernel_facts", lambda opts: kernel)
    monkeypatch.setattr(host_plan, "select", lambda qmp_dir, vms, recs: Scope(
        [qemu(name) for name in running], outside=[qemu(name, pid=pid) for pid, name in enumerate(outside, 100)]))
    judged = []
    suspends = options.pop("suspends", {})
    not_ready = options.pop("not_ready", {})
    upgrade = options.pop("qemu", None)
    monkeypatch.setattr(host_plan.kn, "family", lambda: "debian")
    monkeypatch.setattr(host_plan.qp, "plan_apt", lambda release, only: upgrade or qp.QemuUpgrade(release))

    def assess_all(vms, opts, check_outdated=False, records=None):
        judged.append(opts.reboot_method)
        suspends.update({vm.name: opts.suspend_policy_for(vm.name) for vm in vms})
        return [Readiness(vm, ready=vm.name not in not_ready, reasons=list(not_ready.get(vm.name, ())), verdict=None,
                          status="running") for vm in vms]
    monkeypatch.setattr(host_plan.sv, "assess_all", assess_all)
    monkeypatch.setattr(host_plan.sv, "preflight", lambda ready, journal, check_mode: None)
    monkeypatch.setattr(host_plan.boot_restore, "status", unit_status or (
        lambda opts: {"active": False, "reason": "the unit is down"}))
    return host_plan.plan_host(host_plan.PlanOptions(state_dir=journal.state_dir, **options)), judged


def test_a_cycle_is_planned_and_each_vm_judged_once_for_kexec(tmp_path, monkeypatch):
    plan, judged = planned(tmp_path, monkeypatch, running=["web1"])
    assert (plan["action"], plan["reboot_method"]) == ("cycle", "kexec")
    assert judged == ["kexec"]
    assert plan["plan"]["line"] == ("cycle  reboot kexec  kernel 6.1.0-amd64 -> 6.12.1-amd64  VMs web1:None"
                                    "  restore at boot: off (the unit is down)")


def test_the_plan_shows_the_qemu_version_apt_would_move_to(tmp_path, monkeypatch):
    upgrade = qp.QemuUpgrade("trixie-backports", installed={"qemu-system-x86": "1:10.0.13+ds-0+deb13u1"},
                             moves={"qemu-system-x86": ("1:10.0.13+ds-0+deb13u1", "1:11.1.3+ds-2~bpo13+1")})
    plan = planned(tmp_path, monkeypatch, running=["web1"], update_qemu=True, qemu=upgrade)[0]
    assert "  QEMU 10.0.13 -> 11.1.3 from trixie-backports  " in plan["plan"]["line"]
    assert plan["qemu_packages"]["packages"] == ["qemu-system-x86"]
    assert planned(tmp_path, monkeypatch, running=["web1"])[0]["qemu_packages"] is None, "no update_qemu, no apt"


def test_qemu_packages_apt_cannot_move_refuse_the_host_before_anything_is_paused(tmp_path, monkeypatch):
    upgrade = qp.QemuUpgrade("trixie-backports", installed={"qemu-utils": "1:10.0.13"},
                             problem="E: Unable to correct problems, you have held broken packages.")
    with pytest.raises(NotReadyError, match=r"QEMU's packages \(qemu-utils\) cannot be updated from trixie-backports: "
                                            r"E: Unable to correct problems"):
        planned(tmp_path, monkeypatch, running=["web1"], update_qemu=True, qemu=upgrade)


def test_the_plan_judges_each_vms_suspend_by_the_policy_the_save_will_use(tmp_path, monkeypatch):
    suspends = {}
    planned(tmp_path, monkeypatch, running=["web1", "gpu1"], suspends=suspends, guest_suspend="always",
            guest_suspend_per_vm={"web1": "never"})
    assert suspends == {"web1": "never", "gpu1": "always"}


def test_a_kexec_cycle_says_whether_the_boot_unit_will_restore(tmp_path, monkeypatch):
    def unit(opts):
        return {"active": opts.restore_at_boot, "reason": "on" if opts.restore_at_boot else "x"}
    assert planned(tmp_path, monkeypatch, running=["web1"], unit_status=unit)[0]["plan"]["line"].endswith(
        "restore at boot: on")
    off = planned(tmp_path, monkeypatch, running=["web1"], unit_status=unit, restore_at_boot=False)[0]["plan"]
    assert off["restore_at_boot"] == {"active": False, "reason": "x"}
    without_reboot = planned(tmp_path, monkeypatch, running=["web1"], unit_status=unit, reboot_method="none")[0]
    assert "restore at boot" not in without_reboot["plan"]["line"]


def test_a_restore_after_an_unplanned_reboot_of_memmap_ram_is_refused_before_anything_starts(tmp_path, monkeypatch):
    saved = {"vm": "web1", "phase": jr.SAVED, "boot_id": "an-older-boot", "x_ignore_shared": True,
             "ram_survives": "kexec", "ram_backends": [{"id": "ram0", "mem_path": "/dev/dax0.0"}]}
    monkeypatch.setattr(host_plan.boot_token, "read_cmdline", lambda: "root=/dev/vda")
    with pytest.raises(NotReadyError, match=r"web1: its RAM .*survives only a kexec, and this boot is not the planned"):
        planned(tmp_path, monkeypatch, records=[saved])


def test_vms_saved_in_this_boot_finish_their_cycle(tmp_path, monkeypatch):
    plan = planned(tmp_path, monkeypatch, records=[{"vm": "web1", "phase": jr.SAVED, "boot_id": "b1"}])[0]
    assert plan["action"] == "finish_cycle" and plan["awaiting_restore"] == ["web1"]


def test_the_plan_waits_for_a_save_still_running_on_the_host_and_plans_on_what_it_leaves(tmp_path, monkeypatch):
    """A save a killed controller left running holds the VM lock and the VM's monitor: the rerun's plan waits for it
    (as the save and the restore do), then finds the VM saved, not a VM it cannot talk to."""
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    holding = threading.Event()

    def orphaned_save() -> None:
        with journal.vms_lock(5):
            holding.set()
            time.sleep(0.3)
            journal.write({"vm": "web1", "phase": jr.SAVED, "boot_id": "b1", "state_file": journal.state_path("web1")})
    orphan = threading.Thread(target=orphaned_save)
    orphan.start()
    try:
        assert holding.wait(5)
        plan = planned(tmp_path, monkeypatch)[0]
    finally:
        orphan.join()
    assert plan["action"] == "finish_cycle" and plan["awaiting_restore"] == ["web1"]


def test_a_plan_where_nothing_was_ever_saved_writes_no_lock_file(tmp_path, monkeypatch):
    planned(tmp_path, monkeypatch, running=["web1"])
    assert not (tmp_path / "state" / jr.VMS_LOCK).exists()


def test_a_running_vm_whose_save_is_unrestored_is_no_resume_but_a_conflict(tmp_path, monkeypatch):
    with pytest.raises(NotReadyError, match="web1 run, but the journal holds their unrestored saves"):
        planned(tmp_path, monkeypatch, running=["web1"], records=[{"vm": "web1", "phase": jr.SAVED, "boot_id": "b0"}])


def test_kexec_unusable_without_a_fallback_is_refused_before_anything_is_paused(tmp_path, monkeypatch):
    with pytest.raises(NotReadyError, match="nothing was paused, because: kexec cannot be used"):
        planned(tmp_path, monkeypatch, running=["web1"], kernel={"usable": False})
    plan, judged = planned(tmp_path, monkeypatch, running=["web1"], kernel={"usable": False},
                           kexec_fallback_to_reboot=True)
    assert plan["reboot_method"] == "reboot" and judged == ["reboot"], "RAM judged against the firmware reboot"


def test_a_refused_host_names_its_vms_reasons_too_so_one_run_shows_everything_to_fix(tmp_path, monkeypatch):
    tmpfs = ["its RAM is on tmpfs (/dev/shm/web2), which a reboot loses"]
    with pytest.raises(NotReadyError, match=r"kexec cannot be used .* \| web2: its RAM is on tmpfs") as refused:
        planned(tmp_path, monkeypatch, running=["web1", "web2"], kernel={"usable": False}, not_ready={"web2": tmpfs})
    assert "web1" not in str(refused.value)


def test_a_reboot_with_a_qemu_outside_the_scope_is_refused_before_anything_is_paused(tmp_path, monkeypatch):
    """liveupdate_vms or liveupdate_qmp_dir leaves a VM out: the kexec would take it down unsaved."""
    with pytest.raises(NotReadyError, match=r"nothing was paused, because: 1 QEMU\(s\) run on this host outside the "
                                            r"rollout's scope, and would die unsaved in its kexec: other1 \(pid 100"):
        planned(tmp_path, monkeypatch, running=["web1"], outside=["other1"])
    with pytest.raises(NotReadyError, match="would die unsaved in its reboot: other1"):
        planned(tmp_path, monkeypatch, running=["web1"], outside=["other1"], kernel={"usable": False},
                kexec_fallback_to_reboot=True)
    # no reboot, no danger: a QEMU-only relaunch and a reboot_method=none cycle leave the others alone
    assert planned(tmp_path, monkeypatch, running=["web1"], outside=["other1"], kernel={"needed": False},
                   update_qemu=True)[0]["action"] == "relaunch"
    assert planned(tmp_path, monkeypatch, running=["web1"], outside=["other1"], reboot_method="none")[0]["action"]
    # a cycle whose VMs were saved in this boot (a rerun's finish_cycle) is held to the same rule
    finishing = [{"vm": "web1", "phase": jr.SAVED, "boot_id": "b1"}]
    with pytest.raises(NotReadyError, match="would die unsaved in its kexec: other1"):
        planned(tmp_path, monkeypatch, records=finishing, outside=["other1"])


def test_a_relaunch_judges_the_vms_without_a_reboot(tmp_path, monkeypatch):
    plan, judged = planned(tmp_path, monkeypatch, running=["web1"], kernel={"needed": False}, update_qemu=True)
    assert (plan["action"], plan["vm_reboot_method"]) == ("relaunch", "none") and judged == ["none"]


def test_a_target_kernel_nobody_offers_is_refused(tmp_path, monkeypatch):
    with pytest.raises(NotReadyError, match=r"kernel 6\.12\.1-amd64 is neither installed nor offered"):
        planned(tmp_path, monkeypatch, running=["web1"], kernel={"available": ()})
