"""vm_relaunch: a QEMU-only live update in one call, on a really replaced QEMU binary."""

from __future__ import annotations

import os
import shutil

from ansible_run import run_module
from helpers import assert_resumed, cmdline, qemu_pids

from lab.testvm import qemu_available


def test_relaunch_moves_vms_onto_the_replaced_binary(lab):
    binary = lab.base / "bin" / "qemu-system-x86_64"
    binary.parent.mkdir()
    shutil.copy2(qemu_available(), binary)
    vms = [lab.vm(name, binary=str(binary)) for name in ("november", "oscar")]
    before = {vm.name: vm.wait_booted() for vm in vms}
    scope = {"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir)}

    fresh = run_module("vm_relaunch", scope).result
    assert not fresh["changed"], "nothing is outdated yet"
    assert {vm["action"] for vm in fresh["vms"]} == {"up_to_date"}

    # the "package update": a new file renamed over the binary, as dpkg does
    staged = binary.with_suffix(".new")
    shutil.copy2(qemu_available(), staged)
    os.rename(staged, binary)
    old_pids = qemu_pids(lab.base)

    plan = run_module("vm_relaunch", scope, check=True).result
    assert plan["changed"] and {vm["action"] for vm in plan["vms"]} == {"would_relaunch"}
    assert qemu_pids(lab.base) == old_pids, "check mode pauses nothing"

    done = run_module("vm_relaunch", scope)
    assert done.rc == 0, done.result
    assert done.result["changed"]
    for vm in done.result["vms"]:
        assert vm["action"] == "relaunched" and "replaced" in vm["reason"]
        assert 0 < vm["blackout_seconds"] < 30
    new_pids = qemu_pids(lab.base)
    assert set(new_pids.values()).isdisjoint(old_pids.values())
    for pid in new_pids.values():
        assert os.stat("/proc/%d/exe" % pid).st_ino == binary.stat().st_ino, "runs the installed binary"
        assert cmdline(pid)[0] == str(binary)
    for vm in vms:
        assert_resumed(vm, before[vm.name])

    again = run_module("vm_relaunch", scope).result
    assert not again["changed"], "idempotent: nothing outdated any more"


def test_relaunch_force_cycles_up_to_date_vms(lab):
    vm = lab.vm("papa")
    before = vm.wait_booted()
    run = run_module("vm_relaunch", {"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir), "force": True})
    assert run.rc == 0 and run.result["changed"]
    assert run.result["vms"][0]["reason"] == "force"
    assert_resumed(vm, before)
