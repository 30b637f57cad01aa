# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find the QEMU processes of this host and describe each as a VM record."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_argv
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import DiscoveryError
from ansible_collections.liveupdate.cpr.plugins.module_utils.waiting import wait_until

PROC = "/proc"
QEMU_BINARY = re.compile(r"^(qemu-system-[\w.-]+|qemu-kvm)$")
DELETED_SUFFIX = " (deleted)"
# Parents that restart QEMU when it exits, or (libvirt) own its monitor.
SUPERVISOR_PARENTS = {
    "libvirtd": "libvirt owns this VM and its QMP monitor",
    "virtqemud": "libvirt owns this VM and its QMP monitor",
    "supervise": "daemontools restarts it when it exits",
    "runsv": "runit restarts it when it exits",
    "s6-supervise": "s6 restarts it when it exits",
    "supervisord": "supervisord restarts it when it exits",
}
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


@dataclass
class Supervisor:
    parent_pid: int
    parent_name: str
    cgroup: str
    unit: Optional[str] = None
    restart: Optional[str] = None
    refusal: Optional[str] = None   # why we may not quit this QEMU, if we may not

    def as_dict(self) -> Dict[str, Any]:
        return {"parent_pid": self.parent_pid, "parent": self.parent_name, "cgroup": self.cgroup,
                "unit": self.unit, "restart": self.restart, "refused": self.refusal}


@dataclass
class QemuProcess:
    """A running QEMU as read from /proc; QMP facts are added by readiness."""
    pid: int
    name: str
    argv: List[str]
    cwd: str
    uid: int
    gid: int
    environ: Dict[str, str]
    binary: str
    binary_deleted: bool
    qmp: Optional[qemu_argv.QmpEndpoint]
    qmp_problems: List[str]
    ram: List[qemu_argv.RamBackend]
    supervisor: Supervisor
    secrets: List[str] = field(default_factory=list)

    def summary(self) -> Dict[str, Any]:
        """What may be returned or logged: argv redacted, no environment values."""
        return {
            "name": self.name, "pid": self.pid, "argv": qemu_argv.redact(self.argv),
            "cwd": self.cwd, "uid": self.uid, "gid": self.gid, "binary": self.binary,
            "binary_deleted": self.binary_deleted,
            "qmp": {"path": self.qmp.path, "form": self.qmp.form} if self.qmp else None,
            "ram_backends": [backend.as_dict() for backend in self.ram],
            "supervisor": self.supervisor.as_dict(),
            "environment_names": sorted(self.environ),
        }


def systemd_is_init() -> bool:
    return os.path.isdir("/run/systemd/system")


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _status_fields(pid: int) -> Dict[str, str]:
    fields: Dict[str, str] = {}
    for line in _read("%s/%d/status" % (PROC, pid)).decode(errors="replace").splitlines():
        key, value = line.split(":", 1) if ":" in line else (line, "")
        fields[key] = value.strip()
    return fields


def _unit_of(cgroup: str) -> Optional[str]:
    for part in reversed(cgroup.split("/")):
        if part.endswith((".service", ".scope")):
            return part
    return None


def _systemd_restart(unit: str) -> Optional[str]:
    systemctl = shutil.which("systemctl")
    if not systemctl or not unit.endswith(".service"):
        return None
    result = subprocess.run([systemctl, "show", "--property=Restart", "--value", unit],
                            capture_output=True, text=True, timeout=10, check=False)
    return result.stdout.strip() or None


def read_supervisor(pid: int, parent_pid: int) -> Supervisor:
    try:
        parent_name = _read("%s/%d/comm" % (PROC, parent_pid)).decode().strip()
    except OSError:
        parent_name = "?"
    cgroup = ""
    try:
        for line in _read("%s/%d/cgroup" % (PROC, pid)).decode().splitlines():
            cgroup = line.split(":", 2)[2]
            if line.startswith("0::"):
                break
    except (OSError, IndexError):
        pass
    supervisor = Supervisor(parent_pid, parent_name, cgroup, unit=_unit_of(cgroup))
    if parent_name in SUPERVISOR_PARENTS:
        supervisor.refusal = "%s (parent %s, pid %d)" % (SUPERVISOR_PARENTS[parent_name], parent_name, parent_pid)
    elif "machine-qemu" in cgroup or "/libvirt/" in cgroup:
        supervisor.refusal = "libvirt owns this VM (cgroup %s)" % cgroup
    elif supervisor.unit and systemd_is_init():
        supervisor.restart = _systemd_restart(supervisor.unit)
        if supervisor.restart not in (None, "no"):
            supervisor.refusal = "systemd unit %s has Restart=%s and would start QEMU again onto the saved RAM" % (
                supervisor.unit, supervisor.restart)
    return supervisor


def is_qemu(pid: int) -> bool:
    try:
        exe = os.readlink("%s/%d/exe" % (PROC, pid))
    except OSError:
        return False
    return bool(QEMU_BINARY.match(os.path.basename(exe[:-len(DELETED_SUFFIX)] if exe.endswith(DELETED_SUFFIX) else exe)))


def read_process(pid: int) -> QemuProcess:
    """Describe one QEMU process; raise DiscoveryError if it vanished."""
    base = "%s/%d" % (PROC, pid)
    try:
        argv = [word.decode(errors="surrogateescape") for word in _read(base + "/cmdline").split(b"\0")[:-1]]
        exe = os.readlink(base + "/exe")
        cwd = os.readlink(base + "/cwd")
        environ = dict(entry.decode(errors="surrogateescape").partition("=")[::2]
                       for entry in _read(base + "/environ").split(b"\0") if b"=" in entry)
        status = _status_fields(pid)
    except OSError as exc:
        raise DiscoveryError("QEMU process %d vanished while it was being read: %s." % (pid, exc)) from exc
    endpoints, problems = qemu_argv.qmp_endpoints(argv)
    deleted = exe.endswith(DELETED_SUFFIX)
    name = qemu_argv.vm_name(argv)
    if not name and endpoints:
        name = os.path.splitext(os.path.basename(endpoints[0].path))[0]
    name = name or "pid%d" % pid
    return QemuProcess(
        pid=pid, name=name, argv=argv, cwd=cwd,
        uid=int(status["Uid"].split()[0]), gid=int(status["Gid"].split()[0]), environ=environ,
        binary=exe[:-len(DELETED_SUFFIX)] if deleted else exe, binary_deleted=deleted,
        qmp=endpoints[0] if endpoints else None, qmp_problems=problems,
        ram=qemu_argv.ram_backends(argv),
        supervisor=read_supervisor(pid, int(status.get("PPid", "0"))),
        secrets=qemu_argv.secret_values(argv))


def running_qemus() -> List[QemuProcess]:
    """Every QEMU on the host, skipping processes that exit while we look."""
    found = []
    for entry in os.listdir(PROC):
        if entry.isdigit() and is_qemu(int(entry)):
            try:
                found.append(read_process(int(entry)))
            except DiscoveryError:
                continue
    return sorted(found, key=lambda vm: vm.name)


def check_name(name: str) -> str:
    """A VM name becomes a file name in the state dir, so it must be plain."""
    if not SAFE_NAME.match(name):
        raise DiscoveryError("VM name %r cannot name a journal file." % name, vm=name,
                             fix="give the VM a plain -name guest=NAME (letters, digits, . _ + -).")
    return name


def process_exists(pid: int) -> bool:
    try:
        state = _status_fields(pid).get("State", "")
    except OSError:
        return False
    return not state.startswith(("Z", "X"))


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` exited within ``timeout`` seconds."""
    return bool(wait_until(lambda: not process_exists(pid), timeout, 0.01))


def binary_version(binary: str) -> Optional[str]:
    """The version an installed QEMU binary reports, e.g. '10.0.2'."""
    try:
        info = os.stat(binary)
    except OSError:
        return None
    # every VM of a host usually runs the same binary: ask it once per file identity,
    # so a binary replaced meanwhile is asked again
    return _version_of_file(binary, info.st_dev, info.st_ino, info.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _version_of_file(binary: str, device: int, inode: int, mtime_ns: int) -> Optional[str]:
    try:
        result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return None
    match = re.search(r"version (\d+\.\d+\.\d+)", result.stdout)
    return match.group(1) if match else None
