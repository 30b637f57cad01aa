"""Shared fixtures: real QEMU VMs in a private directory. Helpers that tests import live in ansible_run.py."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
from ansible_run import ROOT

from lab.testvm import TestVm, guest_disk, kill_all, qemu_available


@pytest.fixture(scope="session")
def disk() -> Path:
    qemu_available()  # a missing QEMU fails the run; it never skips
    return guest_disk(ROOT / "build" / "cache")


class Lab:
    """One test's VMs: QMP sockets under qmp_dir, journal under state_dir."""

    def __init__(self, disk: Path) -> None:
        # unix socket paths are limited to 108 bytes, so keep this short
        self.base = Path(tempfile.mkdtemp(prefix="lu-", dir="/tmp"))
        self.qmp_dir = self.base / "qmp"
        self.state_dir = self.base / "state"
        self.disk = disk
        self.vms: Dict[str, TestVm] = {}

    def vm(self, name: str, **options: Any) -> TestVm:
        vm = TestVm(name, self.qmp_dir, self.disk, **options).start()
        self.vms[name] = vm
        return vm

    def cleanup(self) -> None:
        kill_all(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def lab(disk: Path) -> Iterator[Lab]:
    bench = Lab(disk)
    try:
        yield bench
    finally:
        bench.cleanup()
