"""Assertions about real guests, shared by the integration tests."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import Dict

from lab.faults import argv_of
from lab.testvm import GuestState, TestVm, probe


def qemu_pids(base: Path) -> Dict[str, int]:
    """Name -> pid of every QEMU whose command line mentions base."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path("/proc/%s/cmdline" % entry).read_bytes().split(b"\0")
            exe = os.readlink("/proc/%s/exe" % entry)
        except OSError:
            continue
        if "qemu-system" in exe and any(str(base).encode() in word for word in argv):
            name = next(w.decode() for w in argv if w.startswith(b"guest="))[len("guest="):].split(",")[0]
            found[name] = int(entry)
    return found


def cmdline(pid: int) -> list:
    argv = argv_of(pid)
    assert argv, "pid %d is gone" % pid
    return argv


def assert_resumed(vm: TestVm, before: GuestState) -> GuestState:
    """Same nonce (resumed, not rebooted), counter still rising, RAM pattern whole."""
    after = probe(vm)
    assert after.magic == before.magic
    assert after.nonce == before.nonce, "%s rebooted: nonce %x became %x" % (vm.name, before.nonce, after.nonce)
    assert after.pattern_ok, "%s RAM pattern broken: %s" % (vm.name, after.pattern_detail)
    time.sleep(0.3)
    later = probe(vm)
    assert later.status == "running"
    assert later.counter > after.counter >= before.counter, (before.counter, after.counter, later.counter)
    return later


def assert_running_untouched(vm: TestVm, before: GuestState) -> None:
    """A VM that a refused call must not have paused: same nonce and still running."""
    after = probe(vm)
    assert after.status == "running"
    assert after.nonce == before.nonce and after.pattern_ok


def assert_private(path: Path, mode: int) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == mode, "%s has mode %o" % (path, stat.S_IMODE(path.stat().st_mode))


def release_fifo(fifo: Path, timeout: float) -> bool:
    """Give every reader of fifo EOF, once there is one (a held command may not have opened it yet); False when none
    came within timeout (or its own timeout had already ended it). A plain open for writing would wait forever."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(str(fifo), os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
            continue
        os.close(fd)
        return True
