# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration control over QMP: the cpr-reboot mode, the save to and load from a state file, and their outcome.

Both ends of a cpr-reboot are the same calls on one QEMU each: the mode and
x-ignore-shared as recorded, then ``migrate`` (save) or ``migrate-incoming``
(load) with a ``file:`` URI, then a wait for a final status.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ansible_collections.liveupdate.cpr.plugins.module_utils import readiness
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import QmpSession
from ansible_collections.liveupdate.cpr.plugins.module_utils.waiting import wait_until

MIGRATION_DONE = ("completed", "failed", "cancelled")
# With the events capability on, QEMU sends a MIGRATION event at each status change, and the
# wait for the final status wakes on it; the look every RECHECK_SECONDS only bounds a missed one.
RECHECK_SECONDS = 0.1
# QEMU's migration thread sets "completed" and only then, once it holds the big lock, moves the VM
# from finish-migrate to postmigrate: a query-status in between sees finish-migrate (seen on 10.0.13).
SETTLE_SECONDS = 10.0


def in_progress(session: QmpSession) -> bool:
    """A migration has started and not yet reached a final status (an earlier task's, left running)."""
    return session.execute("query-migrate").get("status") not in MIGRATION_DONE + ("none", None)


def set_cpr_mode(session: QmpSession, x_ignore_shared: bool) -> None:
    session.execute("migrate-set-capabilities",
                    {"capabilities": [{"capability": "x-ignore-shared", "state": x_ignore_shared},
                                      {"capability": "events", "state": True}]})
    session.execute("migrate-set-parameters", {"mode": "cpr-reboot"})


def set_normal_mode(session: QmpSession) -> None:
    """Undo set_cpr_mode, for a VM that keeps running after a failed save."""
    session.execute("migrate-set-parameters", {"mode": "normal"})
    session.execute("migrate-set-capabilities",
                    {"capabilities": [{"capability": "x-ignore-shared", "state": False},
                                      {"capability": "events", "state": False}]})


def save_to(session: QmpSession, state_file: str, timeout: float) -> Dict[str, Any]:
    """Migrate the VM into ``state_file``; QEMU's final query-migrate answer."""
    session.execute("migrate", {"uri": "file:" + state_file})
    return result(session, timeout)


def load_from(session: QmpSession, state_file: str, timeout: float) -> Dict[str, Any]:
    """Load ``state_file`` into a QEMU started with ``-incoming defer``.

    exit-on-error off: a failed load leaves QEMU alive, with its reason readable.
    """
    session.execute("migrate-incoming", {"uri": "file:" + state_file, "exit-on-error": False})
    return result(session, timeout)


def result(session: QmpSession, timeout: float) -> Dict[str, Any]:
    """query-migrate once the migration reached a final status (completed, failed or cancelled)."""
    def finished(s: QmpSession) -> Optional[Dict[str, Any]]:
        info: Dict[str, Any] = s.execute("query-migrate")
        return info if info.get("status") in MIGRATION_DONE else None
    info: Dict[str, Any] = session.wait_for(finished, timeout, RECHECK_SECONDS, what="the migration to finish",
                                            wake_on_events=True)
    return info


def run_status_after_save(session: QmpSession) -> str:
    """The VM's run state once a completed outgoing migration has let go of it (normally postmigrate)."""
    seen = {"status": ""}

    def settled() -> bool:
        seen["status"] = readiness.run_status(session)
        return seen["status"] != "finish-migrate"
    wait_until(settled, SETTLE_SECONDS, RECHECK_SECONDS)
    return seen["status"]
