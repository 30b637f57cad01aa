# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cross-version guard: can the installed QEMU take this VM, asked before anything is paused.

QEMU migrates only between the same versioned machine type
(docs/devel/migration/compatibility.rst), and a new build may lack a device or
refuse an option. So, once a new QEMU is installed and before a VM is saved
for it, the engine starts that binary with the VM's configuration, the machine
type pinned to the one the VM runs, plus ``-S -incoming defer``, and asks it
over a private QMP socket whether it waits for the state.

Never with the VM's own argv while the VM runs: that would rebind its QMP
socket and collide with its locked disks, taps and pidfile. The probe's argv is
rewritten: private sockets, no pidfile and no display; every NIC backend a
hub port; every disk a ``null-co`` node; RAM on a private, sparse file; and the
devices that hold a host resource only one process may hold (VFIO, vhost-vsock,
TPM, evdev) left out and said so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_argv as qa
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import QmpError
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import QmpSession
from ansible_collections.liveupdate.cpr.plugins.module_utils.waiting import wait_until

PROBE_TIMEOUT = 30.0
# options dropped with their value: the VM's own files and endpoints, and what only one process may hold
DROPPED = frozenset(("pidfile", "D", "qmp", "qmp-pretty", "monitor", "mon", "gdb", "vnc", "spice", "incoming",
                     "loadvm", "runas", "run-with", "chroot", "writeconfig", "trace", "nic", "net", "tpmdev",
                     "display", "mem-path", "add-fd"))
DROPPED_FLAGS = frozenset(("daemonize", "S", "s", "mem-prealloc", "snapshot"))
NULL_BACKENDS = ("serial", "parallel", "debugcon")
# devices holding a host resource that the running VM holds: the probe leaves them out
EXCLUSIVE_DEVICES = ("vfio-", "vhost-vsock", "vhost-user-", "tpm-", "usb-host", "vhost-scsi")
EXCLUSIVE_OBJECTS = ("input-linux",)
# a configuration the rewrite cannot see into: no probe is better than a wrong one
UNPROBEABLE = ("readconfig",)
BLOCK_STANDIN = {"driver": "null-co", "read-zeroes": True}
# offset: a place in the VM's device; the private file starts empty
RAM_KEYS_DROPPED = ("prealloc", "prealloc-threads", "pmem", "discard-data", "hugetlb", "hugetlbsize", "dump", "offset")


@dataclass
class ProbeResult:
    """What the installed binary said of one VM."""

    binary: str
    took: bool
    reason: Optional[str] = None
    version: Optional[str] = None
    left_out: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _value(option: qa.Option) -> str:
    return option.value or ""


def _is_json(value: str) -> bool:
    return value.lstrip().startswith("{")


def _rewrite_chardev(value: str, private: str) -> str:
    pairs = qa.split_keyval(value, "backend")
    props = dict(pairs)
    ident = props.get("id", "chr")
    if props.get("backend") in ("socket",) and "path" in props:
        return "socket,id=%s,path=%s,server=on,wait=off" % (ident, os.path.join(private, "chr-%s.sock" % ident))
    return "null,id=%s" % ident


def _rewrite_netdev(value: str) -> str:
    if _is_json(value):
        ident = str(qa.parse_object(value).get("id", "net"))
    else:
        ident = dict(qa.split_keyval(value, "type")).get("id", "net")
    return "hubport,id=%s,hubid=0" % ident


def _rewrite_blockdev(value: str) -> str:
    props = qa.parse_object(value)
    return json.dumps(dict(BLOCK_STANDIN, **{"node-name": props.get("node-name", "probe")}))


def _rewrite_drive(value: str) -> str:
    pairs = qa.split_keyval(value)
    props = dict(pairs)
    if props.get("if") == "pflash":
        # firmware: the real file, read only, unlocked (the running VM holds its lock); the probe never runs
        kept = [(k, v) for k, v in pairs if k not in ("readonly", "file.locking", "snapshot")]
        return qa.join_keyval(kept + [("readonly", "on"), ("file.locking", "off")])
    kept = [(k, v) for k, v in pairs if k in ("if", "id", "index", "media", "bus", "unit", "readonly")]
    return qa.join_keyval(kept + [("driver", "null-co"), ("read-zeroes", "on")])


def _rewrite_object(value: str, private: str) -> Optional[str]:
    props = qa.parse_object(value)
    kind = str(props.get("qom-type", ""))
    if kind in EXCLUSIVE_OBJECTS:
        return None
    if not kind.startswith("memory-backend-"):
        return value
    if _is_json(value):
        props = {k: v for k, v in props.items() if k not in RAM_KEYS_DROPPED}
        if "mem-path" in props:
            props["mem-path"] = private
        return json.dumps(props)
    pairs = [(k, private if k == "mem-path" else v) for k, v in qa.split_keyval(value, "qom-type")
             if k not in RAM_KEYS_DROPPED]
    return qa.join_keyval(pairs, "qom-type")


def probe_argv(argv: Sequence[str], machine_type: str, private: str, name: str
               ) -> Tuple[List[str], List[str], Optional[str]]:
    """The probe's argv, what it left out, and why no probe can be made (or None)."""
    out: List[str] = [argv[0]]
    left_out: List[str] = []
    for option in qa.parse_options(argv):
        word = argv[option.index]
        value = _value(option)
        if option.name in UNPROBEABLE:
            return [], left_out, "-%s hides part of its configuration from the probe" % option.name
        if option.value is None:
            if option.name not in DROPPED_FLAGS:
                out.append(word)
            continue
        if option.name in DROPPED:
            if option.name in ("nic", "net", "tpmdev"):
                left_out.append("-%s %s" % (option.name, value.split(",", 1)[0]))
            if option.name == "mem-path":
                out += [word, private]
            continue
        driver = str(qa.device_props(value).get("driver", "")) if option.name == "device" else ""
        if option.name in NULL_BACKENDS:
            out += [word, "null"]
        elif option.name == "chardev":
            out += [word, _rewrite_chardev(value, private)]
        elif option.name == "netdev":
            out += [word, _rewrite_netdev(value)]
        elif option.name == "blockdev":
            out += [word, _rewrite_blockdev(value)]
        elif option.name == "drive":
            out += [word, _rewrite_drive(value)]
        elif option.name in ("hda", "hdb", "hdc", "hdd", "cdrom"):
            index = {"hda": 0, "hdb": 1, "hdc": 2, "hdd": 3, "cdrom": 2}[option.name]
            media = "cdrom" if option.name == "cdrom" else "disk"
            out += ["-drive", "if=ide,index=%d,media=%s,driver=null-co,read-zeroes=on" % (index, media)]
        elif option.name == "device" and driver.startswith(EXCLUSIVE_DEVICES):
            left_out.append("-device %s" % driver)
        elif option.name == "object":
            rewritten = _rewrite_object(value, private)
            if rewritten is None:
                left_out.append("-object %s" % qa.parse_object(value).get("qom-type"))
            else:
                out += [word, rewritten]
        elif option.name == "name":
            pairs = qa.split_keyval(value, "guest")
            out += [word, qa.join_keyval([(k, name if k == "guest" else v) for k, v in pairs], "guest")]
        elif option.name == "overcommit":
            out += [word, qa.join_keyval([(k, v) for k, v in qa.split_keyval(value) if k != "mem-lock"]) or "cpu-pm=off"]
        elif option.name == "realtime":
            continue  # mlock=on would lock the VM's whole RAM a second time
        else:
            out += [word, value]
    out = qa.pin_machine_type(out, machine_type)
    out += ["-display", "none", "-S", "-incoming", "defer",
            "-qmp", "unix:%s,server=on,wait=off" % os.path.join(private, "probe.qmp")]
    return out, left_out, None


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _error_lines(path: str) -> str:
    try:
        with open(path, "rb") as log:
            lines = log.read()[-4000:].decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " ".join(line.strip() for line in lines[-4:])


def probe(vm_name: str, binary: str, argv: Sequence[str], machine_type: str, cwd: str = "/",
          timeout: float = PROBE_TIMEOUT, work_dir: Optional[str] = None) -> ProbeResult:
    """Start ``binary`` with the VM's rewritten configuration and ``-incoming defer``; it takes the VM if it waits."""
    started = time.monotonic()
    private = tempfile.mkdtemp(prefix="cpr-probe-", dir=work_dir)  # 0700
    result = ProbeResult(binary, False)
    try:
        probe_args, result.left_out, unprobeable = probe_argv(argv, machine_type, private, "%s-cpr-probe" % vm_name)
        if unprobeable:
            return ProbeResult(binary, True, "not probed: %s" % unprobeable, left_out=result.left_out)
        log = os.path.join(private, "probe.log")
        with open(log, "wb") as out:
            try:
                process = subprocess.Popen(probe_args, executable=binary, cwd=cwd if os.path.isdir(cwd) else "/",
                                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            except OSError as exc:
                result.reason = "the installed QEMU %s cannot start: %s" % (binary, exc.strerror)
                return result
        qmp = os.path.join(private, "probe.qmp")
        try:
            ready = wait_until(lambda: process.poll() is not None or os.path.exists(qmp), timeout, 0.05)
            if process.poll() is not None:
                result.reason = "the installed QEMU %s refuses its configuration: %s" % (
                    binary, _error_lines(log) or "it exited %s" % process.returncode)
                return result
            if not ready:
                result.reason = "the installed QEMU %s did not open its monitor within %.0f s" % (binary, timeout)
                return result
            try:
                with QmpSession(qmp, vm_name, connect_timeout=timeout, server_pid=process.pid) as session:
                    status = str(session.execute("query-status")["status"])
                    qemu = session.execute("query-version")["qemu"]
                    result.version = "%d.%d.%d" % (qemu["major"], qemu["minor"], qemu["micro"])
                    session.execute("quit")
            except QmpError as exc:
                result.reason = "the installed QEMU %s started, but its monitor failed: %s %s" % (
                    binary, exc.message, _error_lines(log))
                return result
            if status != "inmigrate":
                result.reason = "the installed QEMU %s does not wait for an incoming migration (status %s)" % (
                    binary, status)
                return result
            result.took = True
            return result
        finally:
            _stop(process)
    finally:
        result.seconds = round(time.monotonic() - started, 3)
        shutil.rmtree(private, ignore_errors=True)
