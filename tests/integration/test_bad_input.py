"""Bad input gets a clear error that names the host, the VM, what is wrong and what to do."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from ansible_run import run_module
from helpers import assert_resumed, qemu_pids

HOST = socket.gethostname()


def scope_of(lab, **extra):
    return dict({"qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir), "reboot_method": "none"}, **extra)


def test_vm_socket_that_was_deleted(lab):
    vm = lab.vm("lost")
    vm.wait_booted()
    vm.qmp_path.unlink()
    lab.qmp_dir.joinpath("keep").touch()  # qmp_dir must still exist
    failed = run_module("vm_save", {"vms": ["lost"], "qmp_dir": str(lab.qmp_dir), "state_dir": str(lab.state_dir),
                                    "reboot_method": "none"})
    assert failed.rc != 0
    message = failed.result["msg"]
    assert "host %s, VM lost" % HOST in message and str(vm.qmp_path) in message and "does not exist" in message
    assert "To fix:" in message
    assert "lost" in qemu_pids(lab.base), "nothing was paused or killed"


def test_socket_that_answers_but_is_not_qmp(lab):
    lab.vm("fine").wait_booted()
    impostor = lab.qmp_dir / "impostor.sock"
    server = subprocess.Popen([sys.executable, "-c", (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)\n"
        "while True:\n"
        "    c,_=s.accept(); c.sendall(b'220 hello, I am an SMTP server\\r\\n')\n"), str(impostor)])
    try:
        while not impostor.exists():
            time.sleep(0.01)
        failed = run_module("vm_save", scope_of(lab))
        assert failed.rc != 0
        assert str(impostor) in failed.result["msg"] and "not a QMP monitor" in failed.result["msg"]
        assert "fine" in qemu_pids(lab.base)
    finally:
        server.kill()


def test_a_monitor_another_client_holds_is_named_with_that_clients_pid(lab):
    """QEMU serves one client per monitor socket: a second one is accepted by the kernel and never greeted."""
    vm = lab.vm("held")
    before = vm.wait_booted()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(4096)\n"  # QEMU's greeting: it is ours
        "print('holding', flush=True); time.sleep(600)\n"), str(vm.qmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        failed = run_module("vm_save", scope_of(lab))
        assert failed.rc != 0
        message = failed.result["msg"]
        assert "another client may hold the monitor" in message, message
        assert "held by python" in message and "pid %d" % holder.pid in message, message
        assert "stop pid %d" % holder.pid in message, message
    finally:
        holder.kill()
    assert_resumed(vm, before)


def test_stale_socket_is_a_warning_not_an_error(lab):
    vm = lab.vm("india")
    before = vm.wait_booted()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(lab.qmp_dir / "gone.qmp"))
    stale.close()
    run = run_module("vm_info", scope_of(lab))
    assert run.rc == 0 and run.result["all_ready"]
    assert any("gone.qmp" in warning for warning in run.result.get("warnings", []))
    assert_resumed(vm, before)


def test_vm_name_that_matches_nothing(lab):
    lab.vm("juliet").wait_booted()
    failed = run_module("vm_save", scope_of(lab, vms=["julliet"]))
    assert failed.rc != 0
    assert "no VM named julliet" in failed.result["msg"] and "juliet" in failed.result["msg"]


def test_state_dir_that_is_not_writable(lab):
    lab.vm("kilo").wait_booted()
    blocker = lab.base / "a-file"
    blocker.write_text("not a directory")
    failed = run_module("vm_save", scope_of(lab, state_dir=str(blocker / "state")))
    assert failed.rc != 0
    assert "state dir" in failed.result["msg"] and "not usable" in failed.result["msg"]
    assert "kilo" in qemu_pids(lab.base)


def test_state_file_whose_hash_no_longer_matches(lab):
    vm = lab.vm("lima")
    before = vm.wait_booted()
    assert run_module("vm_save", scope_of(lab)).rc == 0
    state = lab.state_dir / "lima.state"
    original = state.read_bytes()
    state.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))

    refused = run_module("vm_restore", {"state_dir": str(lab.state_dir)})
    assert refused.rc != 0 and "does not match its journal record" in refused.result["msg"]
    assert "QEMU was not started" in refused.result["msg"]
    assert qemu_pids(lab.base) == {}
    assert json.loads((lab.state_dir / "lima.json").read_text())["phase"] == "saved"

    state.write_bytes(original)  # nothing was lost: with the intact file the VM comes back
    assert run_module("vm_restore", {"state_dir": str(lab.state_dir)}).rc == 0
    assert_resumed(vm, before)


def test_state_file_that_matches_but_cannot_be_loaded(lab):
    vm = lab.vm("mike")
    before = vm.wait_booted()
    assert run_module("vm_save", scope_of(lab)).rc == 0
    state = lab.state_dir / "mike.state"
    record_path = lab.state_dir / "mike.json"
    original, record = state.read_bytes(), json.loads(record_path.read_text())
    truncated = original[: len(original) // 2]
    state.write_bytes(truncated)
    import hashlib
    record_path.write_text(json.dumps(dict(record, state_sha256=hashlib.sha256(truncated).hexdigest())))

    failed = run_module("vm_restore", {"state_dir": str(lab.state_dir)})
    assert failed.rc != 0
    assert "could not load the saved state" in failed.result["msg"]
    assert failed.result["failures"][0]["qemu_message"], "QEMU's own reason is reported"
    assert "mike" in qemu_pids(lab.base), "exit-on-error=false keeps QEMU alive to show the error"
    assert state.exists() and json.loads(record_path.read_text())["phase"] == "restore_failed"

    state.write_bytes(original)
    record_path.write_text(json.dumps(dict(json.loads(record_path.read_text()), state_sha256=record["state_sha256"])))
    retried = run_module("vm_restore", {"state_dir": str(lab.state_dir)})
    assert retried.rc == 0, retried.result
    assert_resumed(vm, before)
    assert os.path.exists(record_path)


def test_a_qemu_that_serves_its_monitor_and_then_exits_fails_its_restore_at_once_with_qemus_reason(lab):
    """A QEMU may open its QMP socket and then exit: here a client chardev whose peer is away (as a vhost-user backend
    that did not come back). The restore fails with QEMU's own words, well inside its 600 s, and the VM stays saved
    (the kexec lab's boot unit once retried such a socket for minutes, its QEMU long gone)."""
    peer = lab.base / "peer.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(peer))
    listener.listen(4)
    vm = lab.vm("papa", extra=["-chardev", "socket,id=peer,path=%s" % peer])
    vm.wait_booted()
    assert run_module("vm_save", scope_of(lab)).rc == 0
    listener.close()  # its file stays and refuses, as a peer's socket after the peer's reboot

    started = time.monotonic()
    failed = run_module("vm_restore", {"state_dir": str(lab.state_dir)})
    assert time.monotonic() - started < 300
    assert failed.rc != 0
    message = failed.result["msg"]
    assert "papa" in message and "Failed to connect" in message and "peer.sock" in message, message
    assert "papa" not in qemu_pids(lab.base)
    record = json.loads((lab.state_dir / "papa.json").read_text())
    assert record["phase"] == "restore_failed" and (lab.state_dir / "papa.state").exists()
