"""The cross-version guard on real QEMU binaries: once a VM's binary is replaced, vm_save first starts the installed
binary with the VM's rewritten configuration and -incoming defer (plugins/module_utils/probe.py).

The binary that lacks the VM's machine type is a real one: Debian's qemu-system-x86 package ships
qemu-system-x86_64-microvm, a build with only the microvm machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ansible_run import run_module
from helpers import assert_resumed, assert_running_untouched, qemu_pids

from lab.testvm import qemu_available

MICROVM = "/usr/bin/qemu-system-x86_64-microvm"


def install(source: str, binary: Path) -> None:
    """The "package update": a new file renamed over the binary, as dpkg does; the running QEMU keeps its inode."""
    staged = binary.with_suffix(".new")
    shutil.copy2(source, staged)
    os.rename(staged, binary)


def test_the_installed_qemu_is_probed_without_touching_the_running_vm_and_one_that_lacks_its_machine_is_refused(lab):
    assert os.access(MICROVM, os.X_OK), "%s comes with Debian's qemu-system-x86; run `make setup`" % MICROVM
    binary = lab.base / "bin" / "qemu-system-x86_64"
    binary.parent.mkdir()
    shutil.copy2(qemu_available(), binary)
    vm = lab.vm("papa", binary=str(binary))
    before = vm.wait_booted()
    scope = {"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir), "reboot_method": "none"}
    pids = qemu_pids(lab.base)

    install(qemu_available(), binary)  # the same QEMU, a new file: outdated, and it takes the VM
    plan = run_module("vm_save", scope, check=True)

    assert plan.rc == 0, plan.result
    probed = plan.result["vms"][0]["probe"]
    assert probed["took"] and probed["binary"] == str(binary) and probed["version"], probed
    assert qemu_pids(lab.base) == pids, "the probe left no QEMU behind, and the VM runs on"
    assert_resumed(vm, before)  # same nonce, counter still rising, RAM pattern whole: the probe never touched it
    assert run_module("vm_info", {"qmp_dir": str(lab.qmp_dir)}).result["vms"][0]["pid"] == pids["papa"], \
        "its QMP socket still leads to the VM"

    install(MICROVM, binary)  # a QEMU without the VM's machine type
    refused = run_module("vm_save", scope)

    assert refused.rc != 0
    message = refused.result["msg"]
    assert "nothing was paused" in message and "papa" in message, message
    assert 'unsupported machine type: "pc-' in message and "pinned" in message, message
    assert qemu_pids(lab.base) == pids
    assert_running_untouched(vm, before)
    assert not list(lab.state_dir.glob("papa*")), "no journal record, no state file"
