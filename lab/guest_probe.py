"""Read the cpr test guest's state from outside, over QMP, with the standard library only.

This file also runs inside the lab's hypervisor hosts, which have no qemu.qmp
before host_prepare: keep it free of third-party imports.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
import time
from typing import Any, Callable, Dict, Optional, Tuple

INFO_ADDR = 0x5000
# magic, pass counter, nonce, range start, range end, then the guest's CMOS clock (seconds since midnight)
# at its last pass, its longest stall in seconds, and the clock when that stall ended
INFO_FORMAT = "<IIQIIIII"
MAGIC = 0x47525043           # 'CPRG'
PATTERN_BASE = 0xA5
PAGE = 4096


class Qmp:
    """A minimal synchronous QMP client: one command at a time, events skipped."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(path)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                # QEMU serves one monitor client at a time; wait for the last one to go
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.reader = self.sock.makefile("rb")
        self.next_id = 0
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> Dict[str, Any]:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("QMP connection closed")
        message: Dict[str, Any] = json.loads(line)
        return message

    def cmd(self, name: str, **arguments: Any) -> Any:
        self.next_id += 1
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments, "id": self.next_id}).encode() + b"\n")
        while True:
            reply = self._read()
            if reply.get("id") != self.next_id:
                continue  # an event, or the late reply of a command that timed out
            if "error" in reply:
                raise RuntimeError("%s: %s" % (name, reply["error"].get("desc")))
            return reply["return"]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def check_pattern(first_bytes: bytes, counter: int) -> Tuple[bool, str]:
    """After N passes each page holds 0xA5+N; a pass under way leaves a prefix one higher."""
    base = (PATTERN_BASE + counter) & 0xFF
    ahead = (base + 1) & 0xFF
    split = 0
    while split < len(first_bytes) and first_bytes[split] == ahead:
        split += 1
    rest = first_bytes[split:]
    if all(value == base for value in rest):
        return True, "%d pages at %#x, %d at %#x" % (len(rest), base, split, ahead)
    bad = next(i for i, value in enumerate(rest) if value != base) + split
    return False, "page %d holds %#x; expected %#x (counter %d)" % (bad, first_bytes[bad], base, counter)


def read_guest(monitor: Qmp, scratch_dir: Optional[str] = None) -> Dict[str, Any]:
    """The info block and page bytes, with the VM briefly stopped so both come from one instant."""
    status = monitor.cmd("query-status")["status"]
    with tempfile.TemporaryDirectory(dir=scratch_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)) as tmp:
        if status == "running":
            monitor.cmd("stop")
        try:
            dump = os.path.join(tmp, "info")
            monitor.cmd("pmemsave", val=INFO_ADDR, size=struct.calcsize(INFO_FORMAT), filename=dump)
            with open(dump, "rb") as handle:
                magic, counter, nonce, start, end, clock, stall, stall_ended = struct.unpack(INFO_FORMAT, handle.read())
            ok, detail = False, "guest not started"
            if magic == MAGIC and start < end:
                pages = os.path.join(tmp, "pages")
                monitor.cmd("pmemsave", val=start, size=end - start, filename=pages)
                with open(pages, "rb") as handle:
                    ok, detail = check_pattern(handle.read()[::PAGE], counter)
        finally:
            if status == "running":
                monitor.cmd("cont")
    return {"magic": magic, "counter": counter, "nonce": nonce, "range_start": start, "range_end": end,
            "pattern_ok": ok, "pattern_detail": detail, "status": status,
            "clock": clock, "longest_stall": stall, "longest_stall_ended": stall_ended}


def probe_socket(path: str) -> Dict[str, Any]:
    """The guest's state now, through the QMP socket at path."""
    monitor = Qmp(path)
    try:
        return read_guest(monitor)
    finally:
        monitor.close()


def wait_started(read: Callable[[], Dict[str, Any]], name: str, timeout: float, interval: float) -> Dict[str, Any]:
    """Read the guest until it has written its info block and made a pass; a QMP socket not up yet is retried."""
    deadline = time.monotonic() + timeout
    state: Optional[Dict[str, Any]] = None
    while True:
        try:
            state = read()
            if state["magic"] == MAGIC and state["counter"] > 0:
                return state
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("guest %s did not start its loop within %d s: %r" % (name, timeout, state))
        time.sleep(interval)
