"""The QMP session's connection: how long it keeps trying a socket that refuses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import QmpError
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import QmpSession


@pytest.fixture
def refusing_socket(tmp_path):
    """A socket file that refuses connections, as a QEMU's monitor once that QEMU has exited."""
    path = str(tmp_path / "vm.qmp")
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(path)  # bound, never listening: connect is refused
    yield path
    bound.close()


def test_a_refused_socket_whose_qemu_has_exited_fails_at_once_however_long_the_greeting_may_take(refusing_socket):
    dead_pid = int(subprocess.check_output([sys.executable, "-c", "import os; print(os.getpid())"]))
    assert not os.path.exists("/proc/%d" % dead_pid)
    started = time.monotonic()
    with pytest.raises(QmpError) as failed:
        QmpSession(refusing_socket, "web1", connect_timeout=300, server_pid=dead_pid).connect()
    assert time.monotonic() - started < 60
    assert "QEMU (pid %d) exited before it greeted on its QMP socket %s" % (dead_pid, refusing_socket) \
        in failed.value.message


def test_a_refused_socket_whose_qemu_lives_is_tried_until_the_connect_timeout(refusing_socket):
    started = time.monotonic()
    with pytest.raises(QmpError) as failed:
        QmpSession(refusing_socket, "web1", connect_timeout=1, server_pid=os.getpid()).connect()
    assert time.monotonic() - started >= 1
    assert "cannot connect to QMP socket" in failed.value.message
