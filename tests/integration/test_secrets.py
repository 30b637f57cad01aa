"""Secrets on a QEMU command line never appear in module output or logs."""

from __future__ import annotations

import json

from ansible_run import run_module
from helpers import assert_private, assert_resumed

SECRET = "Hunter2-liveupdate-secret"


def test_secret_object_data_is_masked_everywhere(lab):
    vm = lab.vm("quebec", extra=["-object", "secret,id=sec0,data=%s" % SECRET])
    before = vm.wait_booted()
    scope = {"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir), "reboot_method": "none"}
    runs = [run_module("vm_info", scope, verbose=True), run_module("vm_save", scope, verbose=True),
            run_module("vm_restore", {"state_dir": str(lab.state_dir), "keep_state": True}, verbose=True)]
    for run in runs:
        assert run.rc == 0, run.result
        assert SECRET not in run.stdout + run.stderr
        assert SECRET not in json.dumps(run.entries)
    argv = runs[0].result["vms"][0]["argv"]
    assert "secret,id=sec0,data=********" in argv
    record = lab.state_dir / "quebec.json"
    assert SECRET in record.read_text(), "the journal keeps the real argv, to restart the VM"
    assert_private(record, 0o600)
    assert_private(lab.state_dir / "quebec.state", 0o600)
    assert_resumed(vm, before)
