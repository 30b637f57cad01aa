# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One rollout at a time per host: a lock file in the state dir.

The lock names its run, and the nonce of the one ansible-playbook invocation
that holds it: two invocations given the same run id still exclude each other.
It is refreshed at every phase. A lock whose heartbeat is older than
``stale_after`` belongs to a run that died; it is explained to the operator,
and broken only when the operator names its run.

A fresh lock is taken over without being named only when its holder is proven
dead: the lock names the holder's ansible-playbook process (machine, boot, pid
namespace, pid and start time), and the controller that finds it gone is that
same machine (the action plugin checks, since only the controller can). A holder
on another controller, or one that cannot be checked, is never presumed dead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import JournalError
from ansible_collections.liveupdate.cpr.plugins.module_utils.paths import read_text

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
    take_over_nonce: Optional[str] = None
    check_mode: bool = False


def process_identity(pid: int) -> Dict[str, Any]:
    """What tells one process apart from every other, ever, on this machine: a pid alone is reused."""
    try:
        # field 22 of /proc/PID/stat, counted after the parenthesised command name (which may hold spaces)
        start_ticks = int(read_text("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        start_ticks = -1
    try:
        pid_ns = os.readlink("/proc/%d/ns/pid" % pid)
    except OSError:
        pid_ns = ""
    return {"machine_id": read_text("/etc/machine-id"), "boot_id": read_text("/proc/sys/kernel/random/boot_id"),
            "pid_ns": pid_ns, "pid": pid, "start_ticks": start_ticks}


def with_process(lock_args: Dict[str, Any], pid: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """host_lock's arguments with ``pid``'s identity in the owner, and that identity."""
    here = process_identity(pid)
    return dict(lock_args, owner=dict(lock_args.get("owner") or {}, process=here)), here


def holder_gone(holder: Any, here: Dict[str, Any]) -> Optional[str]:
    """Why the process ``holder`` (a process_identity) is dead, seen from ``here`` (this process's), or None when
    that cannot be proven: on another machine, in another pid namespace, or alive."""
    if not isinstance(holder, dict) or not holder.get("machine_id") or holder.get("machine_id") != here["machine_id"]:
        return None
    if holder.get("boot_id") != here["boot_id"]:
        return "this controller has rebooted since it ran"
    if not holder.get("pid_ns") or holder.get("pid_ns") != here["pid_ns"] or not isinstance(holder.get("pid"), int):
        return None
    now = process_identity(holder["pid"])
    if now["start_ticks"] == -1:
        return "its ansible-playbook (pid %d) is gone" % holder["pid"]
    if now["start_ticks"] != holder.get("start_ticks"):
        return "its ansible-playbook (pid %d) is gone; that pid is another process now" % holder["pid"]
    return None


@contextlib.contextmanager
def _exclusive(state_dir: str) -> Iterator[None]:
    """Serialises lock changes on the host, so two takeovers of one dead lock cannot both win."""
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
    process = owner.get("process") or {}
    pid = ", pid %s" % process["pid"] if process.get("pid") else ""
    return "run %s (controller %s%s, user %s, started %s, last phase %r %d s ago)" % (
        lock.get("run_id"), owner.get("controller", "?"), pid, owner.get("user", "?"),
        lock.get("started_iso", "?"), lock.get("phase", ""), int(now - float(lock.get("heartbeat", 0))))


def held_by_us(lock: Optional[Dict[str, Any]], opts: LockOptions) -> bool:
    """Ours only when both the run id and this invocation's nonce match."""
    return lock is not None and lock.get("run_id") == opts.run_id and lock.get("nonce", "") == opts.nonce


def manage(opts: LockOptions) -> Dict[str, Any]:
    journal = jr.Journal(opts.state_dir)
    if opts.check_mode or not os.path.isdir(journal.state_dir):
        return _manage(opts, journal)
    with _exclusive(journal.state_dir):
        return _manage(opts, journal)


def _manage(opts: LockOptions, journal: jr.Journal) -> Dict[str, Any]:
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
        if opts.take_over_nonce and held.get("nonce", "") == opts.take_over_nonce:
            # the controller proved this lock's ansible-playbook dead (plugins/action/host_lock.py)
            result["taken_over"] = held
            if not opts.check_mode:
                os.unlink(path)
            held = None
        elif stale and opts.break_run_id == held.get("run_id"):
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
