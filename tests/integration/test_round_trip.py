"""Save and restore real QEMU VMs through Ansible, and prove the guests resumed."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from ansible_run import ROOT, run_module, run_playbook
from helpers import assert_private, assert_resumed, cmdline, qemu_pids

from lab.host.evidence import stall_agreement
from lab.testvm import probe

STANDSTILL_SECONDS = 4

PLAYBOOK = ROOT / "tests" / "integration" / "playbooks" / "check_real_check.yml"


def test_round_trip_of_several_vms_at_once(lab):
    lab.vm("alpha")
    lab.vm("bravo", qmp_form="chardev")                      # QMP through -chardev + -mon
    lab.vm("charlie", machine=None)                           # default machine type, to be pinned
    lab.vm("delta", extra=["-daemonize", "-pidfile", str(lab.base / "delta.pid")])
    before = {name: vm.wait_booted() for name, vm in lab.vms.items()}
    scope = {"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir), "reboot_method": "none"}

    info = run_module("vm_info", scope).result
    assert info["all_ready"], info["not_ready"]
    assert {vm["name"]: vm["qmp"]["form"] for vm in info["vms"]}["bravo"] == "chardev"
    assert {vm["name"]: vm["machine_type"] for vm in info["vms"]}["charlie"].startswith("pc-i440fx-")

    saved = run_module("vm_save", scope)
    assert saved.rc == 0, saved.result
    assert saved.result["changed"]
    assert sorted(vm["vm"] for vm in saved.result["vms"] if vm["action"] == "saved") == sorted(lab.vms)
    assert qemu_pids(lab.base) == {}, "saved VMs must have quit"
    assert_private(lab.state_dir, 0o700)
    for vm in saved.result["vms"]:
        assert vm["phase"] == "saved" and vm["mode"] == "ignore-shared"
        assert 100_000 < vm["state_size"] < 2_000_000, "device state only, RAM stays in the shared file"
        assert_private(lab.state_dir / ("%s.state" % vm["vm"]), 0o600)
        assert_private(lab.state_dir / ("%s.json" % vm["vm"]), 0o600)
    journal = json.loads((lab.state_dir / "charlie.json").read_text())
    assert "-machine" in journal["launch_argv"] and journal["machine_type"] in journal["launch_argv"]

    again = run_module("vm_save", scope).result
    assert not again["changed"]
    assert {vm["action"] for vm in again["vms"]} == {"already_saved"}

    time.sleep(STANDSTILL_SECONDS)  # a blackout long enough for the guests' 1 s CMOS clocks to tell
    restored = run_module("vm_restore", {"state_dir": str(lab.state_dir)})
    assert restored.rc == 0, restored.result
    assert restored.result["changed"]
    for vm in restored.result["vms"]:
        assert vm["action"] == "restored"
        assert STANDSTILL_SECONDS < vm["blackout_seconds"] < 60
        assert not (lab.state_dir / ("%s.state" % vm["vm"])).exists(), "state file goes once the VM runs"
    for name, vm in lab.vms.items():
        after = assert_resumed(vm, before[name])
        # the report's blackout is what the guest itself saw: its clock stood still that long, ending then
        reported = next(result for result in restored.result["vms"] if result["vm"] == name)
        agreement = stall_agreement(reported, asdict(after))
        assert agreement["ok"], "%s: %s" % (name, agreement["why"])
    pids = qemu_pids(lab.base)
    assert sorted(pids) == sorted(lab.vms)
    assert cmdline(pids["alpha"])[-2:] == ["-incoming", "defer"]
    assert journal["machine_type"] in cmdline(pids["charlie"])

    settled = run_module("vm_restore", {"state_dir": str(lab.state_dir)}).result
    assert not settled["changed"]
    assert {vm["action"] for vm in settled["vms"]} == {"already_running"}


def test_second_cycle_of_a_restored_vm(lab):
    """A restored VM carries `-incoming defer`; the next cycle must not add a second one."""
    vm = lab.vm("echo")
    before = vm.wait_booted()
    scope = {"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir), "reboot_method": "none"}
    for _cycle in range(2):
        assert run_module("vm_save", scope).rc == 0
        assert run_module("vm_restore", {"state_dir": str(lab.state_dir)}).rc == 0
    assert cmdline(qemu_pids(lab.base)["echo"]).count("-incoming") == 1
    assert_resumed(vm, before)


def test_check_mode_then_real_then_check_mode(lab):
    vm = lab.vm("foxtrot")
    before = vm.wait_booted()
    run = run_playbook(PLAYBOOK, {"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir)})
    assert run.rc == 0, run.stdout[-3000:]
    # save: check (would change), real (changed), check (no change); then restore the same way
    assert [result["changed"] for result in run.results()] == [True, True, False, True, True, False]
    assert_resumed(vm, before)
    assert not lab.state_dir.joinpath("foxtrot.state").exists()


def test_check_mode_pauses_nothing_and_puts_the_mode_back(lab):
    vm = lab.vm("golf")
    before = vm.wait_booted()
    planned = run_module("vm_save", {"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir),
                                     "reboot_method": "none"}, check=True)
    assert planned.result["changed"] and planned.result["vms"][0]["action"] == "would_save"
    assert not lab.state_dir.exists(), "check mode creates nothing"
    monitor = vm.qmp()
    try:
        assert monitor.cmd("query-migrate-parameters")["mode"] == "normal"
    finally:
        monitor.close()
    time.sleep(0.2)
    after = probe(vm)
    assert after.status == "running" and after.nonce == before.nonce and after.counter > before.counter


def test_paused_vm_comes_back_paused(lab):
    vm = lab.vm("hotel")
    vm.wait_booted()
    monitor = vm.qmp()
    try:
        monitor.cmd("stop")
    finally:
        monitor.close()
    before = probe(vm)
    scope = {"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir), "reboot_method": "none"}
    assert run_module("vm_save", scope).rc == 0
    assert run_module("vm_restore", {"state_dir": str(lab.state_dir)}).rc == 0
    after = probe(vm)
    assert after.status == "paused", "a VM saved paused is restored paused"
    assert after.nonce == before.nonce and after.counter == before.counter and after.pattern_ok
