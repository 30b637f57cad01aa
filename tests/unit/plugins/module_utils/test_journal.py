"""The journal: root-only, atomic, and refusing what it cannot trust."""

from __future__ import annotations

import os
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
