"""The rollout lock: one invocation at a time per host, by run id and nonce; stale locks broken only when named."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import host_lock
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import JournalError


def lock(tmp_path, **options):
    return host_lock.manage(host_lock.LockOptions(state_dir=str(tmp_path / "state"), **options))


def test_taken_refreshed_and_released_by_its_own_invocation(tmp_path):
    taken = lock(tmp_path, run_id="r1", nonce="n1", phase="preflight")
    assert taken["acquired"] and taken["held_by"]["nonce"] == "n1"
    assert os.stat(taken["path"]).st_mode & 0o777 == 0o600
    refreshed = lock(tmp_path, run_id="r1", nonce="n1", phase="save")
    assert refreshed["held_by"]["phase"] == "save" and refreshed["held_by"]["started"] == taken["held_by"]["started"]
    assert lock(tmp_path, state="absent", run_id="r1", nonce="n1")["released"]
    assert not os.path.exists(taken["path"])


def test_another_invocation_with_the_same_run_id_is_refused_and_cannot_release_it(tmp_path):
    lock(tmp_path, run_id="20261201T213157Z", nonce="first", phase="stage", owner={"controller": "ops1"})
    with pytest.raises(JournalError, match=r"another rollout holds this host: run 20261201T213157Z .*ops1.*'stage'"):
        lock(tmp_path, run_id="20261201T213157Z", nonce="second", phase="preflight")
    assert not lock(tmp_path, state="absent", run_id="20261201T213157Z", nonce="second")["released"]
    assert lock(tmp_path, run_id="20261201T213157Z", nonce="first", phase="save")["acquired"]


def test_a_stale_lock_is_explained_and_broken_only_when_its_run_is_named(tmp_path):
    lock(tmp_path, run_id="dead", nonce="n0")
    path = tmp_path / "state" / host_lock.LOCK_NAME
    path.write_text(json.dumps(dict(json.loads(path.read_text()), heartbeat=1_000_000_000)))
    with pytest.raises(JournalError, match="stale lock from run dead") as refused:
        lock(tmp_path, run_id="new", nonce="n1", stale_after=60)
    assert "liveupdate_break_lock=dead" in str(refused.value)
    with pytest.raises(JournalError, match="stale lock"):
        lock(tmp_path, run_id="new", nonce="n1", stale_after=60, break_run_id="other")
    assert lock(tmp_path, run_id="new", nonce="n1", stale_after=60, break_run_id="dead")["held_by"]["run_id"] == "new"


def test_a_fresh_lock_of_another_run_is_not_broken_even_when_named(tmp_path):
    lock(tmp_path, run_id="alive", nonce="n0")
    with pytest.raises(JournalError, match="another rollout holds this host"):
        lock(tmp_path, run_id="new", nonce="n1", break_run_id="alive")


def test_check_mode_writes_nothing(tmp_path):
    result = lock(tmp_path, run_id="r1", nonce="n1", check_mode=True)
    assert result["acquired"] is False and not os.path.exists(result["path"])


def test_a_process_is_told_apart_from_a_dead_one_and_from_a_reused_pid():
    here = host_lock.process_identity(os.getpid())
    assert here["pid"] == os.getpid() and here["start_ticks"] > 0 and here["pid_ns"].startswith("pid:[")
    assert host_lock.holder_gone(here, here) is None, "a live holder is never presumed dead"
    child = subprocess.Popen(["true"])
    child.wait()
    dead = host_lock.process_identity(os.getpid()) | {"pid": child.pid}
    assert "pid %d) is gone" % child.pid in host_lock.holder_gone(dead, here)
    reused = dict(here, start_ticks=here["start_ticks"] - 1)
    assert "another process now" in host_lock.holder_gone(reused, here)
    assert "rebooted" in host_lock.holder_gone(dict(here, boot_id="an-earlier-boot"), here)
    # nothing can be proven from another machine, another pid namespace, or an old lock without a process
    assert host_lock.holder_gone(dict(dead, machine_id="another-controller"), here) is None
    assert host_lock.holder_gone(dict(dead, pid_ns="pid:[1]"), here) is None
    assert host_lock.holder_gone(None, here) is None


def test_a_dead_holders_lock_is_taken_over_only_by_its_nonce(tmp_path):
    lock(tmp_path, run_id="killed", nonce="dead1", phase="save", owner={"controller": "ops1"})
    with pytest.raises(JournalError, match="another rollout holds this host"):
        lock(tmp_path, run_id="rerun", nonce="n2", take_over_nonce="some-other-lock")
    checked = lock(tmp_path, run_id="rerun", nonce="n2", take_over_nonce="dead1", check_mode=True)
    assert checked["taken_over"]["run_id"] == "killed" and not checked["acquired"]
    taken = lock(tmp_path, run_id="rerun", nonce="n2", take_over_nonce="dead1", phase="preflight")
    assert taken["acquired"] and taken["taken_over"]["nonce"] == "dead1" and taken["held_by"]["run_id"] == "rerun"
    assert taken["held_by"]["started"] >= taken["taken_over"]["started"]
