"""A host interpreter without qemu.qmp gets Ansible's standard missing-library error."""

from __future__ import annotations

import os
import subprocess

from ansible_run import run_module

SYSTEM_PYTHON = "/usr/bin/python3"


def test_missing_qemu_qmp_is_reported_with_missing_required_lib():
    assert os.path.exists(SYSTEM_PYTHON), "Debian's python3 is part of the set-up"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qemu.qmp"], capture_output=True, check=False)
    assert probe.returncode != 0, "this test needs an interpreter without qemu.qmp"
    run = run_module("vm_info", {"reboot_method": "none"}, extra_vars={"ansible_python_interpreter": SYSTEM_PYTHON})
    assert run.rc != 0
    assert "Failed to import the required Python library (qemu.qmp)" in run.result["msg"]
