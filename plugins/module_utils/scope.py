# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which VMs a call sees: all QEMUs, those whose QMP socket is under qmp_dir, or named ones."""

from __future__ import annotations

import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_argv
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import QemuProcess, running_qemus
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import QmpError, ScopeError
from ansible_collections.liveupdate.cpr.plugins.module_utils.paths import is_under
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import QmpSession


@dataclass
class Scope:
    running: List[QemuProcess]
    warnings: List[str] = field(default_factory=list)
    # every QEMU on the host that is not in scope: a reboot of the host would take them down unsaved
    outside: List[QemuProcess] = field(default_factory=list)
    # of every QEMU seen and every journal record read, in scope or not: for the boundary to mask
    secrets: Set[str] = field(default_factory=set)

    def by_name(self) -> Dict[str, QemuProcess]:
        return {vm.name: vm for vm in self.running}


def secrets_of(vms: Iterable[QemuProcess], records: Iterable[Mapping[str, Any]] = ()) -> Set[str]:
    """The secrets on the command lines of running QEMUs and of journal records."""
    found = {secret for vm in vms for secret in vm.secrets}
    for record in records:
        found.update(qemu_argv.secret_values(record.get("argv", [])))
        found.update(qemu_argv.secret_values(record.get("launch_argv", [])))
    return found


def socket_peer_pid(path: str) -> Optional[int]:
    """The pid serving a unix socket, or None if nothing listens on it."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[0])
    except OSError:
        return None
    finally:
        probe.close()


def _check_stray_sockets(qmp_dir: str, known: Sequence[QemuProcess], warnings: List[str]) -> None:
    """A socket in qmp_dir that no QEMU of ours serves is stale, or something we must not guess about."""
    claimed = {os.path.realpath(vm.qmp.path) for vm in known if vm.qmp}
    pids = {vm.pid for vm in known}
    for entry in sorted(os.listdir(qmp_dir)):
        path = os.path.join(qmp_dir, entry)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode) or os.path.realpath(path) in claimed:
                continue
        except OSError:
            continue
        peer = socket_peer_pid(path)
        if peer is None:
            warnings.append("%s: nothing listens on this socket (stale, left by a QEMU that is gone)" % path)
            continue
        if peer in pids:
            continue  # a second monitor of a VM we already see
        try:
            with QmpSession(path, connect_timeout=3):
                pass
        except QmpError as exc:
            raise ScopeError("socket %s in qmp_dir answers, but is not a QMP monitor (pid %d)." % (path, peer),
                             fix="move non-QMP sockets out of qmp_dir, or narrow the scope with vms.") from exc
        raise ScopeError("socket %s in qmp_dir is a QMP monitor of pid %d, which is not a QEMU this host shows us." % (
            path, peer), fix="run the collection where that QEMU's /proc is visible, or move its socket out of qmp_dir.")


def select(qmp_dir: Optional[str], names: Sequence[str], journal: Optional[Mapping[str, Dict[str, Any]]] = None) -> Scope:
    """The running VMs in scope; names may also match VMs that are saved and down (the journal's records, by name)."""
    journal = journal or {}
    journal_sockets = [str(record.get("qmp", {}).get("path", "")) for record in journal.values()]
    running = running_qemus()
    scope = Scope(running, secrets=secrets_of(running, journal.values()))
    if qmp_dir and not os.path.isdir(qmp_dir) and any(is_under(path, qmp_dir) for path in journal_sockets):
        # a qmp_dir under /run is gone after the reboot; its VMs are in the journal, and the restore recreates it
        scope.running = []
        scope.warnings.append("qmp_dir %s does not exist (yet): no VM runs there; the journal holds VMs to restore "
                              "into it." % qmp_dir)
    elif qmp_dir:
        if not os.path.isdir(qmp_dir):
            raise ScopeError("qmp_dir %s does not exist or is not a directory." % qmp_dir,
                             fix="set qmp_dir to the directory that holds the VMs' QMP sockets, or leave it empty for all QEMUs.")
        scope.running = [vm for vm in running if vm.qmp and is_under(vm.qmp.path, qmp_dir)]
        _check_stray_sockets(qmp_dir, running, scope.warnings)
    seen: Dict[str, QemuProcess] = {}
    for vm in scope.running:
        if vm.name in seen:
            raise ScopeError("two QEMU processes (pids %d and %d) are both named %s." % (seen[vm.name].pid, vm.pid, vm.name),
                             vm=vm.name, fix="give every VM a unique -name guest=NAME; the journal is keyed by it.")
        seen[vm.name] = vm
    if names:
        unknown = [name for name in names if name not in seen and name not in journal]
        if unknown:
            raise ScopeError("no VM named %s runs%s or is in the journal. VMs in scope: %s." % (
                ", ".join(unknown), " under %s" % qmp_dir if qmp_dir else "", ", ".join(sorted(seen)) or "none"),
                vm=unknown[0], fix="check the names in vms against -name guest=NAME of each QEMU.")
        scope.running = [vm for vm in scope.running if vm.name in names]
    in_scope = {vm.pid for vm in scope.running}
    scope.outside = [vm for vm in running if vm.pid not in in_scope]
    return scope
