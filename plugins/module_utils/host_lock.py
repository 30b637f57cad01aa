# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One rollout at a time per host: a lock file in the state dir.

The lock names its run, and the nonce of the one ansible-playbook invocation
that holds it: two invocations given the same run id still exclude each other.
It is refreshed at every phase. A lock whose heartbeat is older than
``stale_after`` belongs to a run that died; it is explained to the operator,
and broken only when the operator names its run.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import JournalError

LOCK_NAME = "rollout.lock"


@dataclass
class LockOptions:
    state_dir: str = jr.DEFAULT_STATE_DIR
    state: str = "present"
    run_id: str = ""
    nonce: str = ""
    owner: Optional[Dict[str, Any]] = None
    phase: str = ""
    stale_after: int = 7200
    break_run_id: Optional[str] = None
    check_mode: bool = False


def _read(path: str) -> Optional[Dict[str, Any]]:
    data = jr.read_json(path, "lock", "inspect it; remove it only when no rollout works on this host.")
    return data if isinstance(data, dict) else None


def _write_new(path: str, content: Dict[str, Any]) -> bool:
    """Create the lock only if nobody holds it (O_EXCL)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(content, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _refresh(path: str, content: Dict[str, Any]) -> None:
    temp = path + ".tmp"
    with open(temp, "w") as handle:
        json.dump(content, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temp, 0o600)
    os.rename(temp, path)


def describe(lock: Dict[str, Any], now: float) -> str:
    owner = lock.get("owner") or {}
    return "run %s (controller %s, user %s, started %s, last phase %r %d s ago)" % (
        lock.get("run_id"), owner.get("controller", "?"), owner.get("user", "?"),
        lock.get("started_iso", "?"), lock.get("phase", ""), int(now - float(lock.get("heartbeat", 0))))


def held_by_us(lock: Optional[Dict[str, Any]], opts: LockOptions) -> bool:
    """Ours only when both the run id and this invocation's nonce match."""
    return lock is not None and lock.get("run_id") == opts.run_id and lock.get("nonce", "") == opts.nonce


def manage(opts: LockOptions) -> Dict[str, Any]:
    journal = jr.Journal(opts.state_dir)
    path = os.path.join(journal.state_dir, LOCK_NAME)
    now = jr.now()
    held = _read(path)
    result: Dict[str, Any] = {"changed": False, "path": path, "held_by": held, "host": socket.gethostname()}
    if opts.state == "absent":
        ours = held_by_us(held, opts) or (held is not None and held.get("run_id") == opts.break_run_id)
        if ours and not opts.check_mode:
            os.unlink(path)
        result["released"] = ours
        return result
    if held is not None and not held_by_us(held, opts):
        stale = now - float(held.get("heartbeat", 0)) > opts.stale_after
        if stale and opts.break_run_id == held.get("run_id"):
            if not opts.check_mode:
                os.unlink(path)
            held = None
        elif stale:
            raise JournalError(
                "a stale lock from %s is on this host; that run died or lost the host." % describe(held, now),
                fix="check the journal in %s (vm_info shows VMs awaiting restore), then rerun with "
                    "liveupdate_break_lock=%s to take the lock over." % (journal.state_dir, held.get("run_id")),
                lock=held)
        else:
            raise JournalError("another rollout holds this host: %s." % describe(held, now),
                               fix="wait for it to finish, or find out why it still runs.", lock=held)
    if opts.check_mode:
        result["acquired"] = False
        return result
    journal.ensure()
    content = dict(held or {}, run_id=opts.run_id, nonce=opts.nonce, owner=opts.owner or {}, phase=opts.phase, heartbeat=now)
    if held is None:
        content.update(started=now, started_iso=jr.iso(now))
        if not _write_new(path, content):
            raise JournalError("another rollout took the lock on this host at the same moment.",
                               fix="run one rollout per host at a time.")
    else:
        _refresh(path, content)
    result.update(acquired=True, held_by=content)
    return result
