"""The journal: root-only, atomic, and refusing what it cannot trust."""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import stat

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import JournalError


def test_dir_is_private_and_records_are_atomic(tmp_path):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    assert stat.S_IMODE(os.stat(journal.state_dir).st_mode) == 0o700
    record = journal.set_phase({"vm": "web1", "argv": ["qemu"]}, jr.SAVING)
    assert record["timestamps"]["saving"] > 0
    assert stat.S_IMODE(os.stat(journal.record_path("web1")).st_mode) == 0o600
    journal.set_phase(record, jr.SAVED)
    assert journal.read("web1")["phase"] == jr.SAVED
    assert [name for name in os.listdir(journal.state_dir) if name.endswith(".tmp")] == []


def test_too_open_dir_is_tightened(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    jr.Journal(str(state)).ensure()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_unusable_dir_and_unreadable_record(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="not usable"):
        jr.Journal(str(blocker / "state")).ensure()
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    with open(journal.record_path("bad"), "w") as handle:
        handle.write("{not json")
    with pytest.raises(JournalError, match="cannot be read") as caught:
        journal.read("bad")
    assert caught.value.vm == "bad"


def _traced_write(monkeypatch, path, record):
    """write_json's durability steps, as (step, path) in the order it took them."""
    trace = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        target = os.readlink("/proc/self/fd/%d" % fd)
        if os.path.isdir(target):
            trace.append(("fsync_dir", target))
        else:
            with open(target) as handle:
                trace.append(("fsync", target, handle.read()))
        real_fsync(fd)

    def rename(source, destination):
        trace.append(("rename", str(source), str(destination)))
        real_rename(source, destination)

    monkeypatch.setattr(jr.os, "fsync", fsync)
    monkeypatch.setattr(jr.os, "rename", rename)
    jr.write_json(str(path), record)
    monkeypatch.undo()
    return trace


def _after_power_loss(trace, cut, path, old, new):
    """Every content ``path`` may hold after power is lost before step ``cut``, on a filesystem that keeps
    only what was fsynced: file data is durable after an fsync of the file, a rename after an fsync of its dir;
    anything not yet durable may or may not have reached the disk, and data that did may be cut short."""
    done = trace[:cut]
    renames = [i for i, step in enumerate(done) if step[0] == "rename" and step[2] == str(path)]
    if not renames:
        return {old}
    at = renames[-1]
    temp = done[at][1]
    rename_durable = any(step[0] == "fsync_dir" and step[1] == os.path.dirname(str(path)) for step in done[at:])
    data_durable = any(step[0] == "fsync" and step[1] == temp and step[2] == new for step in done)
    outcomes = {new} if data_durable else {new, new[: len(new) // 2], ""}
    return outcomes if rename_durable else outcomes | {old}


def test_a_record_survives_power_loss_at_every_step_as_the_old_one_or_the_new_one(tmp_path, monkeypatch):
    """temp file, fsync, rename, fsync of the dir: cut the power anywhere and the record is whole, old or new."""
    path = tmp_path / "web1.json"
    jr.write_json(str(path), {"vm": "web1", "phase": "saving"})
    old = path.read_text()
    new_record = {"vm": "web1", "phase": "saved", "state_sha256": "ab" * 32}

    trace = _traced_write(monkeypatch, path, new_record)

    new = path.read_text()
    assert [step[0] for step in trace] == ["fsync", "rename", "fsync_dir"], trace
    assert trace[0][2] == new, "the temp file is whole when it is fsynced"
    assert trace[1][1] == trace[0][1] and trace[1][1] != str(path), "the record is never written in place"
    for cut in range(len(trace) + 1):
        possible = _after_power_loss(trace, cut, path, old, new)
        assert possible <= {old, new}, "power lost before step %d may leave %r" % (cut, possible - {old, new})
    assert _after_power_loss(trace, len(trace), path, old, new) == {new}, "once write_json returns, the new one is durable"
    assert [name for name in os.listdir(tmp_path) if name.endswith(".tmp")] == []
    # the model does catch the classic mistake: a rename before the data's fsync may leave half a record
    unsynced = [("rename", trace[0][1], str(path)), ("fsync_dir", str(tmp_path))]
    assert _after_power_loss(unsynced, 2, path, old, new) - {old, new}


# -- the host's VM lock: a module a killed controller left running still holds it --------------------------------
@contextlib.contextmanager
def another_holder(journal):
    """Another process (a module still running on the host) holding the VM lock; it lets go when the block ends,
    unless the block killed it. Yields its pid."""
    ready, release = os.pipe(), os.pipe()
    holder = os.fork()
    if holder == 0:
        os.close(ready[0])
        os.close(release[1])
        with journal.vms_lock(5):
            os.write(ready[1], b"x")
            os.read(release[0], 1)
        os._exit(0)
    os.close(ready[1])
    os.close(release[0])
    try:
        assert os.read(ready[0], 1) == b"x"
        yield holder
    finally:
        with contextlib.suppress(BrokenPipeError):  # a holder the block killed reads no more
            os.write(release[1], b"x")
        os.waitpid(holder, 0)


def test_the_vms_lock_waits_for_its_holder_then_refuses_naming_how_to_find_it(tmp_path):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    with another_holder(journal):
        busy = r"another save or restore of this host.s VMs .* still runs after \d+ s"
        with pytest.raises(JournalError, match=busy) as refused, journal.vms_lock(0.3):
            pytest.fail("two holders of the VM lock")
        assert "fuser -v %s" % os.path.join(journal.state_dir, jr.VMS_LOCK) in refused.value.fix
    with journal.vms_lock(1):  # released with its holder
        pass


def test_the_vms_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    with another_holder(journal) as holder:
        os.kill(holder, signal.SIGKILL)
        with journal.vms_lock(1):  # the kernel drops a dead process's flock, before anyone reaps it
            pass


def test_a_holder_of_the_vms_lock_outlives_the_hangup_of_its_terminal(tmp_path):
    """A save or restore must not die halfway when the controller's SSH session goes. Without pipelining Ansible runs
    a module on a pty (ssh -tt): sshd closing it hangs the terminal up, and the kernel sends the session SIGHUP. The
    module then finishes with nobody to answer to. Here the session is the holder's own, on a real pty."""
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    ready, release = os.pipe(), os.pipe()
    holder, terminal = pty.fork()  # the holder leads a new session whose controlling terminal is the pty
    if holder == 0:
        with journal.vms_lock(5):
            os.write(ready[1], b"x")
            os.read(release[0], 1)
        os._exit(7)
    assert os.read(ready[0], 1) == b"x"
    os.close(terminal)  # as sshd does when its client is gone: the terminal hangs up
    os.write(release[1], b"x")
    _pid, status = os.waitpid(holder, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7, (
        "the hangup killed the holder (signal %s)" % (os.WTERMSIG(status) if os.WIFSIGNALED(status) else None))


def test_the_vms_lock_gives_back_the_hangup_handler_it_found(tmp_path):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()

    def handler(_signum, _frame):
        raise AssertionError("not called")
    previous = signal.signal(signal.SIGHUP, handler)
    try:
        with journal.vms_lock(1):
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is handler
        with journal.vms_lock(1, create=False):  # a reader's wait: the plan may be stopped like any reader
            assert signal.getsignal(signal.SIGHUP) is handler
    finally:
        signal.signal(signal.SIGHUP, previous)
