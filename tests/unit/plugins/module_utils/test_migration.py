"""Migration control: what is sent to QEMU for a save and a load, and how the wait for the end works."""

from __future__ import annotations

import itertools

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import migration
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import QmpError
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import QmpSession


class FakeSession(QmpSession):
    """QMP without QEMU: every command is recorded, query-migrate answers the given statuses in turn."""

    def __init__(self, *statuses):
        super().__init__("/nonexistent/vm1.qmp", "vm1")
        self.sent = []
        self.pauses = []
        self.statuses = itertools.chain(statuses, itertools.repeat(statuses[-1])) if statuses else iter(())

    def execute(self, command, arguments=None, timeout=None):
        self.sent.append((command, arguments))
        if command == "query-migrate":
            status = next(self.statuses)
            return {"status": status, "error-desc": "no space"} if status == "failed" else {"status": status}
        return {}

    def next_event(self, timeout):
        self.pauses.append(timeout)


@pytest.fixture
def session_of():
    made = []

    def make(*statuses):
        made.append(FakeSession(*statuses))
        return made[-1]
    yield make
    for session in made:
        session.close()


def capabilities(session):
    return [{c["capability"]: c["state"] for c in args["capabilities"]}
            for command, args in session.sent if command == "migrate-set-capabilities"]


def test_cpr_mode_turns_on_events_and_normal_mode_puts_everything_back(session_of):
    session = session_of()
    migration.set_cpr_mode(session, x_ignore_shared=True)
    migration.set_normal_mode(session)
    assert capabilities(session) == [{"x-ignore-shared": True, "events": True}, {"x-ignore-shared": False, "events": False}]
    modes = [args["mode"] for command, args in session.sent if command == "migrate-set-parameters"]
    assert modes == ["cpr-reboot", "normal"]


def test_a_save_migrates_to_the_file_and_waits_on_events_for_the_end(session_of):
    session = session_of("setup", "active", "device", "completed")
    assert migration.save_to(session, "/var/lib/liveupdate-cpr/vm1.state", 60) == {"status": "completed"}
    assert session.sent[0] == ("migrate", {"uri": "file:/var/lib/liveupdate-cpr/vm1.state"})
    assert [sent[0] for sent in session.sent[1:]] == ["query-migrate"] * 4
    assert session.pauses == [migration.RECHECK_SECONDS] * 3, "each pause is a wait for QEMU's next event"


def test_a_load_keeps_qemu_alive_on_error_and_returns_the_failure(session_of):
    session = session_of("active", "failed")
    info = migration.load_from(session, "/state/vm1.state", 60)
    assert info == {"status": "failed", "error-desc": "no space"}
    assert session.sent[0] == ("migrate-incoming", {"uri": "file:/state/vm1.state", "exit-on-error": False})


def test_a_migration_that_never_ends_times_out(session_of):
    session = session_of("active")
    with pytest.raises(QmpError, match="waiting for the migration to finish"):
        migration.result(session, 0)
