"""Which VMs a call sees: qmp_dir narrows, names must exist, and a socket nobody claims is never guessed about."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile

import pytest
from engine_fakes import qemu as fake_qemu

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal, qmp, scope
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import QmpError, ScopeError


def qemu(name, socket_path, pid=4242, secrets=()):
    return fake_qemu(name, qmp=socket_path or None, pid=pid, secrets=secrets)


@pytest.fixture
def qmp_dir():
    """A short path: unix socket paths are limited to 107 bytes, pytest's tmp_path may be longer."""
    path = tempfile.mkdtemp(prefix="qmp-", dir="/tmp")
    yield path
    shutil.rmtree(path)


@pytest.fixture
def running(monkeypatch):
    def set_running(*vms):
        monkeypatch.setattr(scope, "running_qemus", lambda: list(vms))
    return set_running


def names(found):
    return sorted(vm.name for vm in found.running)


def test_without_qmp_dir_or_names_every_qemu_is_in_scope(running):
    running(qemu("a", "/run/x/a.sock"), qemu("b", None, pid=2))
    assert names(scope.select(None, [])) == ["a", "b"]


def test_qmp_dir_keeps_only_vms_whose_socket_is_under_it(running, qmp_dir):
    running(qemu("in", os.path.join(qmp_dir, "in.sock")), qemu("out", "/run/elsewhere/out.sock", pid=2),
            qemu("nomon", None, pid=3), qemu("prefix", qmp_dir + "-other/p.sock", pid=4))

    found = scope.select(qmp_dir, [])

    assert names(found) == ["in"]
    assert found.warnings == []
    assert sorted(vm.name for vm in found.outside) == ["nomon", "out", "prefix"], "what a reboot would take down"


def test_names_narrow_the_scope_and_may_name_vms_only_the_journal_knows(running):
    running(qemu("a", "/run/x/a.sock"), qemu("b", "/run/x/b.sock", pid=2))
    found = scope.select(None, ["b", "saved"], {"saved": {"qmp": {"path": "/run/x/saved.sock"}}})
    assert names(found) == ["b"] and [vm.name for vm in found.outside] == ["a"]


def test_an_unknown_name_is_refused_listing_the_vms_in_scope(running, qmp_dir):
    running(qemu("in", os.path.join(qmp_dir, "in.sock")), qemu("out", "/run/elsewhere/out.sock", pid=2))

    with pytest.raises(ScopeError, match=re.escape("no VM named out, ghost runs under %s" % qmp_dir)) as refused:
        scope.select(qmp_dir, ["in", "out", "ghost"])

    assert refused.value.vm == "out"
    assert "VMs in scope: in." in refused.value.message


def test_two_qemus_with_one_name_are_refused(running):
    running(qemu("a", "/run/x/a.sock", pid=1), qemu("a", "/run/x/a2.sock", pid=2))
    with pytest.raises(ScopeError, match=re.escape("(pids 1 and 2) are both named a")):
        scope.select(None, [])


def test_a_qmp_dir_that_is_gone_after_the_reboot_is_fine_when_the_journal_has_vms_there(running, tmp_path):
    gone = str(tmp_path / "run-qmp")
    running(qemu("other", "/run/x/other.sock"))

    found = scope.select(gone, [], {"web1": {"qmp": {"path": os.path.join(gone, "web1.sock")}}})

    assert found.running == []
    assert "does not exist (yet)" in found.warnings[0]
    with pytest.raises(ScopeError, match="does not exist or is not a directory"):
        scope.select(gone, [], {"web1": {"qmp": {"path": "/run/elsewhere/web1.sock"}}})


def test_secrets_come_from_every_qemu_and_record_in_scope_or_not(running, qmp_dir):
    running(qemu("in", os.path.join(qmp_dir, "in.sock"), secrets=["s-in"]),
            qemu("out", "/run/elsewhere/out.sock", pid=2, secrets=["s-out"]))
    record = {"argv": ["qemu", "-object", "secret,id=k,data=s-journal"], "qmp": {"path": "/nowhere/x.sock"}}

    found = scope.select(qmp_dir, [], {"old": record})

    assert {"s-in", "s-out", "s-journal"} <= found.secrets


def test_a_socket_in_qmp_dir_that_nobody_listens_on_is_a_warning(running, qmp_dir):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.path.join(qmp_dir, "stale.sock"))  # bound, never listening: connect is refused
    with open(os.path.join(qmp_dir, "notes.txt"), "w") as handle:
        handle.write("not a socket")
    running()
    try:
        found = scope.select(qmp_dir, [])
    finally:
        stale.close()
    assert len(found.warnings) == 1
    assert "stale.sock: nothing listens on this socket" in found.warnings[0]


def test_a_live_socket_in_qmp_dir_no_qemu_of_ours_serves_refuses_the_scope(running, qmp_dir, monkeypatch):
    class NotQmp:
        def __init__(self, path, vm=None, **_kwargs):
            pass

        def __enter__(self):
            raise QmpError("no QMP greeting", None, "x")

        def __exit__(self, *_exc):
            return None

    monkeypatch.setattr(scope, "QmpSession", NotQmp)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.path.join(qmp_dir, "other.sock"))
    server.listen(1)
    try:
        running()
        with pytest.raises(ScopeError, match=re.escape("answers, but is not a QMP monitor (pid %d)" % os.getpid())):
            scope.select(qmp_dir, [])
        # the same socket served by the pid of a QEMU we see is that VM's second monitor: no refusal
        running(qemu("mine", os.path.join(qmp_dir, "mine.sock"), pid=os.getpid()))
        assert names(scope.select(qmp_dir, [])) == ["mine"]
    finally:
        server.close()


def test_the_clients_of_a_monitor_socket_are_read_from_ss(monkeypatch):
    listing = "\n".join([
        "u_str ESTAB 0 0 /run/qemu/web1.qmp 5001 * 5002 users:((\"qemu-system-x86\",pid=42,fd=9))",
        "u_str ESTAB 0 0 * 5002 * 5001 users:((\"virt-top\",pid=77,fd=3),(\"virt-top\",pid=78,fd=3))",
        "u_str ESTAB 0 0 * 6002 * 6001 users:((\"sshd\",pid=99,fd=4))",
        "u_str LISTEN 0 4096 /run/qemu/web1.qmp 5000 * 0 users:((\"qemu-system-x86\",pid=42,fd=7))",
    ])
    monkeypatch.setattr(qmp.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, listing, ""))
    assert qmp.monitor_clients("/run/qemu/web1.qmp") == [(77, "virt-top"), (78, "virt-top")]
    assert qmp.monitor_clients("/run/qemu/other.qmp") == []


def test_a_monitor_held_by_a_save_of_ours_says_to_wait_for_it_not_to_stop_it(monkeypatch, tmp_path):
    """A save or restore a killed controller left running holds the VM's monitor and the host's VM lock."""
    lock = tmp_path / journal.VMS_LOCK
    with open(lock, "w"):  # this process, as the save that has the lock open
        assert qmp.vms_lock_open_in(os.getpid()) == str(lock)
        monkeypatch.setattr(qmp, "monitor_clients", lambda path: [(os.getpid(), "python")])
        session = qmp.QmpSession("/run/qemu/web1.qmp", "web1", connect_timeout=0.1)
        with pytest.raises(QmpError, match=r"held by pid %d, a save or restore of this collection" % os.getpid()) as held:
            session._connect_failed(QmpError("no greeting", "web1", "/run/qemu/web1.qmp"))
    assert "do not stop it" in held.value.fix and "fuser -v %s" % lock in held.value.fix
    assert qmp.vms_lock_open_in(os.getpid()) is None
