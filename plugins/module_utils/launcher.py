# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start QEMU so that it outlives the Ansible task that started it.

Where systemd is PID 1 the process runs in a transient unit (no Restart=,
so it never fights a later save); elsewhere it runs in a session of its own
with its output in the state dir. Either way no shell is involved.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_argv
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import process_exists, systemd_is_init
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import RestoreError
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import socket_peer_pid
from ansible_collections.liveupdate.cpr.plugins.module_utils.waiting import wait_until

UNIT_PREFIX = "liveupdate-cpr-"
# A guest the boot unit restores starts as soon as its own resources exist, not after basic.target as a transient
# unit's default dependencies would have it; it is still stopped before the shutdown, as a default unit is.
EARLY_BOOT_PROPERTIES = ("DefaultDependencies=no", "After=local-fs.target systemd-journald.socket",
                         "Conflicts=shutdown.target", "Before=shutdown.target")
LOG_TAIL_BYTES = 2000


@dataclass
class Launched:
    pid: int
    unit: Optional[str]
    log: Optional[str]
    method: str

    def as_dict(self) -> Dict[str, Any]:
        return {"pid": self.pid, "unit": self.unit, "log": self.log, "method": self.method}

    def output(self) -> str:
        """QEMU's last words: its unit's journal, or its log file."""
        return _unit_log(self.unit) if self.unit else log_tail(self.log)


def log_tail(path: Optional[str]) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
        return handle.read().decode(errors="replace").strip()


def _drops_privileges_itself(argv: Sequence[str]) -> bool:
    return qemu_argv.has_flag(argv, "runas") or any(
        "user" in dict(qemu_argv.split_keyval(value)) for value in qemu_argv.values_of(argv, "run-with"))


def _unit_name(vm: str) -> str:
    return "%s%s-%d" % (UNIT_PREFIX, re.sub(r"[^A-Za-z0-9_.-]", "_", vm), int(time.time()))


def _start_systemd_unit(record: Dict[str, Any], argv: List[str], early_boot: bool = False) -> str:
    unit = _unit_name(record["vm"])
    command = [shutil.which("systemd-run") or "systemd-run", "--unit", unit, "--collect", "--quiet",
               "--working-directory", record["cwd"],
               "--property", "Type=%s" % ("forking" if qemu_argv.has_flag(argv, "daemonize") else "exec")]
    for prop in EARLY_BOOT_PROPERTIES if early_boot else ():
        command += ["--property", prop]
    pidfile = qemu_argv.pidfile(argv)
    if pidfile:
        command += ["--property", "PIDFile=%s" % pidfile]
    if not _drops_privileges_itself(argv) and record["uid"] != 0:
        command += ["--uid", str(record["uid"]), "--gid", str(record["gid"])]
    for key, value in sorted(record.get("environ", {}).items()):
        command.append("--setenv=%s=%s" % (key, value))
    command += ["--", record["binary"]] + argv[1:]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RestoreError("systemd-run could not start QEMU: %s" % result.stderr.strip(), vm=record["vm"],
                           fix="see `journalctl -u %s`; the state file and journal are kept." % unit)
    return unit


def _start_detached(record: Dict[str, Any], argv: List[str], log: str) -> subprocess.Popen[bytes]:
    credentials: Dict[str, Any] = {}
    if not _drops_privileges_itself(argv) and record["uid"] != os.geteuid():
        credentials = {"user": record["uid"], "group": record["gid"], "extra_groups": []}
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(argv, executable=record["binary"], cwd=record["cwd"], env=record.get("environ") or {},
                                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, close_fds=True,
                                start_new_session=True, **credentials)
    except OSError as exc:
        raise RestoreError("cannot start %s: %s." % (record["binary"], exc), vm=record["vm"],
                           fix="check that the QEMU binary is installed; the state file and journal are kept.") from exc
    finally:
        os.close(fd)


# the least a launch waits for a live QEMU to serve its QMP socket
DEFAULT_LAUNCH_TIMEOUT = 60.0


def ensure_socket_dir(record: Dict[str, Any]) -> None:
    """Recreate the QMP socket's directory as it was at the save (a /run directory does not survive a reboot)."""
    directory = os.path.dirname(record["qmp"]["path"])
    if os.path.isdir(directory):
        return
    mode = record["qmp"].get("dir_mode", 0o700)
    os.makedirs(os.path.dirname(directory), mode=0o755, exist_ok=True)
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        return  # the restore of another VM in the same directory, running at the same moment, made it
    os.chmod(directory, mode)  # mkdir's mode is cut by the umask
    os.chown(directory, record["qmp"].get("dir_uid", record["uid"]), record["qmp"].get("dir_gid", record["gid"]))


def _unit_failed(unit: str) -> bool:
    result = subprocess.run([shutil.which("systemctl") or "systemctl", "show", "--property=ActiveState", "--value", unit],
                            capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip() in ("failed", "inactive")


def _unit_log(unit: str) -> str:
    result = subprocess.run([shutil.which("journalctl") or "journalctl", "--unit", unit, "--lines", "5", "--no-pager",
                             "--output", "cat"], capture_output=True, text=True, timeout=30, check=False)
    return " / ".join(line for line in result.stdout.splitlines() if line.strip())


def launch(record: Dict[str, Any], argv: List[str], log: str, timeout: float = DEFAULT_LAUNCH_TIMEOUT, early_boot: bool = False
           ) -> Launched:
    """Start ``argv`` and wait until its QMP socket is served by a live QEMU (``early_boot``: by the boot unit)."""
    socket_path = record["qmp"]["path"]
    try:
        ensure_socket_dir(record)
    except OSError as exc:
        raise RestoreError("cannot recreate the QMP socket's directory: %s." % exc, vm=record["vm"],
                           fix="create %s as it was, then run vm_restore again; the state file and journal are kept."
                           % os.path.dirname(socket_path)) from exc
    if systemd_is_init():
        unit: Optional[str] = _start_systemd_unit(record, argv, early_boot)
        child = None
        where: Optional[str] = None
    else:
        unit, where = None, log
        child = _start_detached(record, argv, log)
    unit_checked = time.monotonic()

    def not_served() -> RestoreError:
        detail = log_tail(where) if where else "%s (journalctl -u %s)" % (_unit_log(unit or ""), unit)
        if child is not None and child.poll() is None:
            child.kill()
        return RestoreError(
            "QEMU did not serve its QMP socket %s within %.0f s: %s" % (socket_path, timeout, detail or "no output"),
            vm=record["vm"], fix="fix what QEMU reports and run vm_restore again; the state file and journal are kept.")

    def served() -> Optional[Launched]:
        nonlocal unit_checked
        peer = socket_peer_pid(socket_path)
        # with -daemonize the parent waits for its child to serve the socket: wait for the parent to go
        if peer is not None and process_exists(peer) and (
                child is None or child.poll() is not None or child.pid == peer):
            return Launched(peer, unit, where, "systemd-run" if unit else "detached")
        if child is not None and child.poll() not in (None, 0):
            raise not_served()
        if unit is not None and time.monotonic() > unit_checked + 0.5:
            unit_checked = time.monotonic()
            if _unit_failed(unit):
                raise not_served()
        return None

    launched = wait_until(served, timeout, 0.01)
    if launched is None:
        raise not_served()
    return launched
