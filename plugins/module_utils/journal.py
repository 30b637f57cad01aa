# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restart journal: one JSON record per VM in a root-only state dir.

A record is written atomically (temp file, fsync, rename, fsync of the dir)
before its VM is paused, so whatever happens next, the argv, the state file
and the phase needed to bring the VM back are on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import stat
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import JournalError
from ansible_collections.liveupdate.cpr.plugins.module_utils.waiting import wait_until

DEFAULT_STATE_DIR = "/var/lib/liveupdate-cpr"
SCHEMA = 1
SAVING, SAVED, SAVE_FAILED = "saving", "saved", "save_failed"
RESTORING, RESTORED, RESTORE_FAILED = "restoring", "restored", "restore_failed"
# A VM in one of these phases is down and waits for vm_restore.
AWAITING_RESTORE = (SAVED, RESTORING, RESTORE_FAILED)
RECORD_SUFFIX = ".json"
STATE_SUFFIX = ".state"
# Held by whoever saves, restores or relaunches this host's VMs (the boot unit, vm_save, vm_restore, vm_relaunch),
# for as long as its process lives: no VM is loaded twice, and a module left running by a killed controller
# finishes before a rerun's module touches the same VMs.
VMS_LOCK = ".vms.lock"


def now() -> float:
    return round(time.time(), 6)


def iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as handle:
        return handle.read().strip()


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str, what: str, fix: str, vm: Optional[str] = None) -> Any:
    """``path``'s JSON value, None when the file is missing; one it cannot read is a JournalError naming ``what``."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise JournalError("%s %s cannot be read: %s." % (what, path, exc), vm=vm, fix=fix) from exc


def write_json(path: str, data: Dict[str, Any]) -> None:
    """Replace ``path`` atomically and durably (temp file, fsync, rename, fsync of the dir), mode 0600."""
    directory = os.path.dirname(path)
    fd, temp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temp, path)
        fsync_path(directory)
    except OSError:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def hangup_ignored() -> Iterator[None]:
    """SIGHUP ignored for the block: a save or restore half done must finish when the controller's SSH session goes,
    not leave a VM paused mid-migration with nobody to resume it. Without pipelining Ansible runs a module on a pty
    (ssh -tt), and sshd closing it hangs the terminal up: the kernel sends the session SIGHUP. Only the main thread
    may set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


class Journal:
    """The state dir of one host."""

    def __init__(self, state_dir: str = DEFAULT_STATE_DIR) -> None:
        self.state_dir = os.path.abspath(state_dir)

    def ensure(self) -> None:
        """Create the dir 0700, or refuse one that others could read or that we cannot write."""
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            info = os.stat(self.state_dir)
            if stat.S_IMODE(info.st_mode) & 0o077:
                os.chmod(self.state_dir, 0o700)
            with tempfile.NamedTemporaryFile(dir=self.state_dir, prefix=".probe-"):
                pass
        except OSError as exc:
            raise JournalError("state dir %s is not usable: %s." % (self.state_dir, exc.strerror or exc),
                               fix="choose a state_dir on a local, writable filesystem that root owns.") from exc
        if info.st_uid != os.geteuid():
            raise JournalError("state dir %s belongs to uid %d, not to us." % (self.state_dir, info.st_uid),
                               fix="chown it to root or choose another state_dir.")

    def record_path(self, vm: str) -> str:
        return os.path.join(self.state_dir, vm + RECORD_SUFFIX)

    def state_path(self, vm: str) -> str:
        return os.path.join(self.state_dir, vm + STATE_SUFFIX)

    def log_path(self, vm: str) -> str:
        return os.path.join(self.state_dir, vm + ".log")

    def read(self, vm: str) -> Optional[Dict[str, Any]]:
        record = read_json(self.record_path(vm), "journal record",
                           "inspect the file; the VM's state file is kept beside it.", vm=vm)
        if record is None:
            return None
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            raise JournalError("journal record %s has an unknown format." % self.record_path(vm), vm=vm)
        return record

    def records(self) -> List[Dict[str, Any]]:
        try:
            names = sorted(os.listdir(self.state_dir))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.endswith(RECORD_SUFFIX) and not name.startswith("."):
                record = self.read(name[:-len(RECORD_SUFFIX)])
                if record is not None:
                    found.append(record)
        return found

    def write(self, record: Dict[str, Any]) -> Dict[str, Any]:
        record["schema"] = SCHEMA
        record["updated_at"] = now()
        path = self.record_path(record["vm"])
        try:
            write_json(path, record)
        except OSError as exc:
            raise JournalError("cannot write journal record %s: %s." % (path, exc.strerror or exc),
                               vm=record["vm"], fix="free space in the state dir or choose another one.") from exc
        return record

    @contextlib.contextmanager
    def vms_lock(self, timeout: float, create: bool = True) -> Iterator[None]:
        """Exclusive over this host's saves and restores, waited for at most ``timeout`` s; released when its
        process dies. ``create=False`` is a reader's wait (the plan's), which writes nothing: where no save or restore
        ever ran, there is no lock file, and nothing to wait for."""
        path = os.path.join(self.state_dir, VMS_LOCK)
        if not create and not os.path.exists(path):
            yield
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if create else os.open(path, os.O_RDONLY)
        try:
            def taken() -> bool:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True
            if not wait_until(taken, timeout, 0.1):
                raise JournalError("another save or restore of this host's VMs (the boot unit, or a vm_save, "
                                   "vm_restore or vm_relaunch, perhaps left running by a controller that was "
                                   "killed) still runs after %d s." % timeout,
                                   fix="wait for it (`fuser -v %s` names its process; journalctl -u "
                                       "liveupdate-cpr-restore.service shows the boot unit's progress), then run "
                                       "the rollout again." % path)
            with contextlib.nullcontext() if not create else hangup_ignored():
                yield
        finally:
            os.close(fd)

    def set_phase(self, record: Dict[str, Any], phase: str, **fields: Any) -> Dict[str, Any]:
        record["phase"] = phase
        record.setdefault("timestamps", {})[phase] = now()
        record.update(fields)
        return self.write(record)

    def free_bytes(self) -> int:
        info = os.statvfs(self.state_dir)
        return info.f_bavail * info.f_frsize
