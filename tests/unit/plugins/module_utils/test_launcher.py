"""Relaunch details that a reboot exposes: the QMP socket's directory under /run is gone; at boot, basic.target is
not there yet."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import launcher
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import ScopeError
from ansible_collections.liveupdate.cpr.plugins.module_utils.launcher import ensure_socket_dir
from ansible_collections.liveupdate.cpr.plugins.module_utils.save import socket_dir_of
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import select


def test_socket_dir_is_recreated_as_it_was_at_the_save(tmp_path):
    qmp_dir = tmp_path / "run" / "vms"
    qmp_dir.mkdir(parents=True)
    os.chmod(qmp_dir, 0o750)
    socket_path = str(qmp_dir / "web1.qmp")
    record = {"vm": "web1", "uid": 0, "gid": 0, "qmp": dict(socket_dir_of(socket_path), path=socket_path)}
    qmp_dir.rmdir()
    (tmp_path / "run").rmdir()  # as after a reboot: the whole /run tree is new

    ensure_socket_dir(record)

    info = os.stat(qmp_dir)
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())


def test_record_without_dir_facts_gets_a_root_only_dir(tmp_path):
    socket_path = str(tmp_path / "gone" / "web1.qmp")
    ensure_socket_dir({"vm": "web1", "uid": os.getuid(), "gid": os.getgid(), "qmp": {"path": socket_path}})
    assert stat.S_IMODE(os.stat(tmp_path / "gone").st_mode) == 0o700


def test_vms_restored_at_once_into_one_missing_dir_all_succeed(tmp_path):
    """vm_restore restores VMs concurrently; two of them may find the directory missing at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    records = [{"vm": "web%d" % i, "uid": os.getuid(), "gid": os.getgid(),
                "qmp": {"path": str(tmp_path / "run" / "lab" / "qmp" / ("web%d.qmp" % i))}} for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(ensure_socket_dir, records))
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "lab" / "qmp").st_mode) == 0o700


def test_a_missing_qmp_dir_is_excused_only_by_journal_vms_that_lived_there(tmp_path):
    gone = str(tmp_path / "run" / "vms")
    journal = {"web1": {"vm": "web1", "qmp": {"path": gone + "/web1.qmp"}}}
    scope = select(gone, ["web1"], journal)
    assert scope.running == [] and "does not exist (yet)" in scope.warnings[0]
    with pytest.raises(ScopeError, match="does not exist"):
        select(gone, [], {"db1": {"vm": "db1", "qmp": {"path": "/elsewhere/db1.qmp"}}})
    with pytest.raises(ScopeError, match="does not exist"):
        select(gone, [])


def systemd_run_argv(monkeypatch, early_boot):
    seen = []

    def run(command, **_kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")
    monkeypatch.setattr(launcher.subprocess, "run", run)
    record = {"vm": "web1", "cwd": "/", "uid": 0, "gid": 0, "binary": "/usr/bin/qemu-system-x86_64", "environ": {}}
    launcher._start_systemd_unit(record, ["qemu", "-name", "web1"], early_boot)
    return seen[0]


def test_a_guest_the_boot_unit_restores_does_not_wait_for_basic_target_but_still_stops_before_shutdown(monkeypatch):
    early = systemd_run_argv(monkeypatch, early_boot=True)
    for prop in ("DefaultDependencies=no", "Conflicts=shutdown.target", "Before=shutdown.target"):
        assert prop in early
    assert "DefaultDependencies=no" not in systemd_run_argv(monkeypatch, early_boot=False)
