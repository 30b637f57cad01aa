"""What must be refused, and refused before anything is paused."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time

from ansible_run import run_module
from helpers import assert_resumed, assert_running_untouched, qemu_pids

from lab.testvm import QEMU, probe


def scope_of(lab, **extra):
    return dict({"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir)}, **extra)


def test_anonymous_ram_fails_by_default_and_saves_with_save_ram(lab):
    anon = lab.vm("anon", ram="anon")
    shared = lab.vm("shared")
    before = {"anon": anon.wait_booted(), "shared": shared.wait_booted()}

    refused = run_module("vm_save", scope_of(lab, reboot_method="none"))
    assert refused.rc != 0
    message = refused.result["msg"]
    assert "VM anon" in message and "anonymous RAM" in message and "save_ram" in message
    assert "nothing was paused" in message
    for name, vm in lab.vms.items():
        assert_running_untouched(vm, before[name])  # the shared-RAM VM was not saved either
    assert not lab.state_dir.joinpath("shared.state").exists()

    saved = run_module("vm_save", scope_of(lab, reboot_method="none", ram_policy_per_vm={"anon": "save_ram"}))
    assert saved.rc == 0, saved.result.get("msg", saved.result)
    modes = {vm["vm"]: (vm["mode"], vm["state_size"]) for vm in saved.result["vms"]}
    assert modes["anon"][0] == "save-ram" and modes["anon"][1] > 2 * (1 << 20), "RAM goes into the state file"
    assert modes["shared"][0] == "ignore-shared" and modes["shared"][1] < 2 * (1 << 20)

    restored = run_module("vm_restore", {"state_dir": str(lab.state_dir)})
    assert restored.rc == 0, restored.result
    for name, vm in lab.vms.items():
        assert_resumed(vm, before[name])


def test_tmpfs_ram_is_refused_for_kexec_and_accepted_for_none(lab):
    vm = lab.vm("tmpfs")
    before = vm.wait_booted()
    info = run_module("vm_info", scope_of(lab, reboot_method="kexec")).result
    reasons = info["not_ready"]["tmpfs"]
    assert any("tmpfs" in reason and "kexec" in reason for reason in reasons), reasons

    refused = run_module("vm_save", scope_of(lab, reboot_method="kexec"))
    assert refused.rc != 0 and "does not survive a kexec" in refused.result["msg"]
    assert_running_untouched(vm, before)

    assert run_module("vm_info", scope_of(lab, reboot_method="none")).result["all_ready"]
    assert run_module("vm_save", scope_of(lab, reboot_method="none")).rc == 0
    assert run_module("vm_restore", {"state_dir": str(lab.state_dir)}).rc == 0
    assert_resumed(vm, before)


def test_declared_persistent_path_is_accepted_for_kexec(lab):
    vm = lab.vm("declared")
    vm.wait_booted()
    info = run_module("vm_info", scope_of(lab, reboot_method="kexec", persistent_paths=["/dev/shm"])).result
    assert info["all_ready"], info["not_ready"]
    assert "declared persistent" in info["vms"][0]["ram"]["backends"][0]["reason"]


def test_blocker_is_reported_in_qemus_words_before_anything_pauses(lab):
    blocked = lab.vm("blocked", extra=[
        "-object", "memory-backend-file,id=peer,size=1M,mem-path=/dev/shm/liveupdate-test-%d-peer,share=on" % os.getpid(),
        "-device", "ivshmem-plain,memdev=peer"])
    bystander = lab.vm("bystander")
    before = {"blocked": blocked.wait_booted(), "bystander": bystander.wait_booted()}

    info = run_module("vm_info", scope_of(lab, reboot_method="none")).result
    blockers = {vm["name"]: vm["blockers"] for vm in info["vms"]}
    assert blockers["bystander"] == []
    assert any("ivshmem" in reason for reason in blockers["blocked"]), blockers

    refused = run_module("vm_save", scope_of(lab, reboot_method="none"))
    assert refused.rc != 0
    assert "Migration is disabled when using feature 'peer mode' in device 'ivshmem'" in refused.result["msg"]
    for name, vm in lab.vms.items():
        assert_running_untouched(vm, before[name])
        monitor = vm.qmp()
        try:
            assert monitor.cmd("query-migrate-parameters")["mode"] == "normal", "the mode is put back"
        finally:
            monitor.close()


def test_failed_save_without_a_listed_blocker_leaves_the_vm_running(lab):
    share = lab.base / "fat"
    share.mkdir()
    (share / "hello.txt").write_text("hello")
    vm = lab.vm("vvfat", extra=["-drive", "file=fat:rw:%s,format=vvfat,if=none,id=fat0" % share,
                                "-device", "ide-hd,drive=fat0,bus=ide.1"])
    before = vm.wait_booted()
    info = run_module("vm_info", scope_of(lab, reboot_method="none")).result
    assert info["all_ready"], "QEMU lists no cpr-reboot blocker for vvfat, yet the save will fail"

    failed = run_module("vm_save", scope_of(lab, reboot_method="none"))
    assert failed.rc != 0
    assert "left running" in failed.result["msg"]
    assert failed.result["failures"][0]["vm"] == "vvfat"
    assert_resumed(vm, before)
    record = json.loads((lab.state_dir / "vvfat.json").read_text())
    assert record["phase"] == "save_failed" and record["error"]
    assert not (lab.state_dir / "vvfat.state").exists(), "a partial state file never passes for a good one"
    assert (lab.state_dir / "vvfat.state.partial").exists()

    nothing = run_module("vm_restore", {"state_dir": str(lab.state_dir)}).result
    assert not nothing["changed"] and nothing["vms"][0]["action"] == "not_saved"


def test_supervised_vm_is_refused(lab):
    """daemontools' supervise restarts QEMU when it exits: our quit would be undone onto the saved RAM."""
    free = lab.vm("free")
    free.wait_booted()
    from lab.testvm import TestVm
    guarded = TestVm("guarded", lab.qmp_dir, lab.disk)
    service = lab.base / "svc"
    service.mkdir()
    guarded.own_disk.write_bytes(lab.disk.read_bytes())
    (service / "run").write_text("#!/bin/sh\nexec %s\n" % shlex.join([QEMU] + guarded.argv()[1:]))
    (service / "run").chmod(0o755)
    supervisor = subprocess.Popen(["supervise", str(service)], start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while "guarded" not in qemu_pids(lab.base) or not guarded.qmp_path.exists():
            assert time.monotonic() < deadline, "supervise did not start QEMU"
            time.sleep(0.1)
        before = guarded.wait_booted()
        refused = run_module("vm_save", scope_of(lab, reboot_method="none"))
        assert refused.rc != 0
        assert "VM guarded" in refused.result["msg"] and "daemontools" in refused.result["msg"]
        assert_running_untouched(guarded, before)
        info = run_module("vm_info", scope_of(lab, reboot_method="none")).result
        supervisors = {vm["name"]: vm["supervisor"] for vm in info["vms"]}
        assert supervisors["guarded"]["parent"] == "supervise" and supervisors["free"]["refused"] is None
        assert probe(free).status == "running"
    finally:
        os.killpg(supervisor.pid, signal.SIGKILL)
