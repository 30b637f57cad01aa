"""Faults landed by pid at a named boundary of a rollout, for the fault matrix (tests/integration/test_fault_matrix.py
and the molecule kexec scenario).

    python -m lab.faults after-jump --lab-dir LAB --host hv3 --kill controller -- ansible-playbook -i ... kernel-live-update.yml
    python -m lab.faults after-jump --lab-dir LAB --host hv3 --kill host -- ansible-playbook ...

after-jump starts the rollout, waits (bounded) until the lab host's serial console shows a new kernel's banner, which
is the moment of the jump, and then kills either the controller (ansible-playbook and its workers: the host reboots
on its own) or the host's QEMU (a host that never comes back). It prints one JSON line: what it killed, when, the
lock the host held just before the jump, and the rollout's output and exit status once it ended.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

BANNER = b"Linux version "
WAIT = 600.0


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.005) -> Any:
    """predicate's first truthy value, polled; an AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("no %s within %d s" % (what, timeout))


def _parent_of(pid: int) -> Optional[int]:
    try:
        return int(Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _argv_of(pid: int) -> List[str]:
    try:
        return [word.decode() for word in Path("/proc/%d/cmdline" % pid).read_bytes().split(b"\0")[:-1]]
    except OSError:
        return []


def controller_pids(playbook_pid: int) -> List[int]:
    """ansible-playbook and its workers (its forks, with its command line), not the modules they started."""
    workers = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
               if _parent_of(pid) == playbook_pid and any("ansible-playbook" in word for word in _argv_of(pid))]
    return [playbook_pid] + workers


def kill_controller(playbook: subprocess.Popen) -> List[int]:  # type: ignore[type-arg]
    """SIGKILL the controller, as a crash or an OOM kill would; its pids. Modules on the host are left running."""
    pids = controller_pids(playbook.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def banners(console: Path) -> int:
    try:
        return console.read_bytes().count(BANNER)
    except OSError:
        return 0


def after_jump(lab_dir: Path, host_name: str, kill: str, rollout: Sequence[str]) -> Dict[str, Any]:
    from lab.host.fleet import Lab  # the lab's own SSH and power switch

    lab = Lab(lab_dir)
    host = lab.host(host_name)
    console = Path(host.home) / "console.log"
    booted = banners(console)
    playbook = subprocess.Popen(list(rollout), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lock: Dict[str, Any] = {}

        def jumped() -> bool:
            if banners(console) > booted:
                return True
            # the lock's last refresh before the jump is the save's (none inside the blackout); from then on only
            # the console is watched, so that no SSH call to a host going down delays the kill
            if lock.get("phase") != "save":
                seen = lab.run(host, "cat", "/var/lib/liveupdate-cpr/rollout.lock", check=False, timeout=20)
                lock.update(json.loads(seen) if seen.startswith("{") else {})
            return False
        wait_for("jump of %s (a new kernel banner in %s)" % (host_name, console), jumped, interval=0.2)
        killed_at = time.time()
        if kill == "controller":
            killed = kill_controller(playbook)
        else:
            killed = [int(Path(host.pidfile).read_text())]
            lab.power_off(host)
        output = playbook.communicate(timeout=WAIT)[0]
    finally:
        if playbook.poll() is None:
            kill_controller(playbook)
            playbook.communicate(timeout=60)
    return {"host": host_name, "killed": kill, "pids": killed, "killed_at": killed_at,
            "lock_before_the_jump": lock, "rc": playbook.returncode, "output": output}


def main(argv: Optional[Sequence[str]] = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if "--" not in words:
        raise SystemExit("give the rollout's command after --")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fault", choices=["after-jump"])
    parser.add_argument("--lab-dir", type=Path, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--kill", choices=["controller", "host"], required=True)
    args = parser.parse_args(words[:words.index("--")])
    print(json.dumps(after_jump(args.lab_dir, args.host, args.kill, words[words.index("--") + 1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
