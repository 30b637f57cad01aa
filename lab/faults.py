"""Faults landed by pid at a named boundary of a rollout, for the fault matrix (tests/integration/test_fault_matrix.py
and the molecule kexec scenario).

    python -m lab.faults after-jump --lab-dir LAB --host hv3 --kill controller -- ansible-playbook -i ... kernel-live-update.yml
    python -m lab.faults after-jump --lab-dir LAB --host hv3 --kill host -- ansible-playbook ...
    python -m lab.faults before-jump --lab-dir LAB --host hv1 -- ansible-playbook ...
    python -m lab.faults ssh-cut --lab-dir LAB --host hv1 -- ansible-playbook ...

Each starts the rollout given after --, lands its fault, and prints one JSON line: what it did, when, and the
rollout's output and exit status once it ended. Every wait is bounded.
- after-jump waits until the lab host's serial console shows a new kernel's banner, which is the moment of the jump,
  and then kills either the controller (ansible-playbook and its workers: the host reboots on its own) or the host's
  QEMU (a host that never comes back). It also returns the lock the host held just before the jump.
- before-jump kills the controller once its worker runs the flush that comes right before the jump
  (roles/kexec/tasks/reboot.yml), which is after the save: the VMs are saved and the host is never rebooted.
- ssh-cut stops the module that holds the host's VM lock (the save, in a cycle) with SIGSTOP, pulls the host's
  network cable (QMP set_link) so that the controller's SSH session hangs until ServerAlive* gives up, waits for the
  rollout to end, plugs the cable back in and lets the module go on: it finishes with nobody to answer to.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

BANNER = b"Linux version "
WAIT = 600.0
# a rollout's way to its save or jump: on three busy TCG lab hosts a kernel install alone took 264 s, and the stage
# before a jump about 10 minutes in all
REACH = 1800.0
LOCK_POLL = 3.0
# one read of the lock over SSH: a login to a busy TCG host has taken over 20 s while it installed a kernel
LOCK_READ_TIMEOUT = 90.0
# the raw command of roles/kexec/tasks/reboot.yml's step right before the jump, on its worker's ssh command line
FLUSH_BEFORE_THE_JUMP = "sync && date +%s.%N"


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


def argv_of(pid: int) -> List[str]:
    """A process's command line; [] once it is gone."""
    try:
        return [word.decode() for word in Path("/proc/%d/cmdline" % pid).read_bytes().split(b"\0")[:-1]]
    except OSError:
        return []


def _descends_from(pid: int, ancestor: int) -> bool:
    for _generation in range(8):
        parent = _parent_of(pid)
        if parent is None or parent <= 1:
            return False
        if parent == ancestor:
            return True
        pid = parent
    return False


def all_pids() -> List[int]:
    """Every process's pid, now."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def controller_pids(playbook_pid: int) -> List[int]:
    """ansible-playbook and its workers (its forks, with its command line), not the modules they started."""
    workers = [pid for pid in all_pids()
               if _parent_of(pid) == playbook_pid and any("ansible-playbook" in word for word in argv_of(pid))]
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


def bytes_read(pid: int) -> int:
    """How many bytes the process has read so far, by every read call (/proc/PID/io's rchar)."""
    for line in Path("/proc/%d/io" % pid).read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise ValueError("/proc/%d/io has no rchar line" % pid)


def banners(console: Path) -> int:
    try:
        return console.read_bytes().count(BANNER)
    except OSError:
        return 0


@contextlib.contextmanager
def rollout_started(rollout: Sequence[str]) -> Iterator[subprocess.Popen[str]]:
    """The rollout under test, its output captured; whatever way the case ends, no controller of it is left."""
    playbook = subprocess.Popen(list(rollout), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield playbook
    except BaseException:
        # the fault did not land: what the rollout was doing is the first thing to read
        if playbook.poll() is None:
            kill_controller(playbook)
        output = playbook.communicate(timeout=60)[0] or ""
        sys.stderr.write("the rollout's output, its last 8000 characters:\n%s\n" % output[-8000:])
        raise
    finally:
        if playbook.poll() is None:
            kill_controller(playbook)
            playbook.communicate(timeout=60)


class LockWatch:
    """The host's rollout lock, read over SSH in the background every LOCK_POLL s until it shows the save's refresh
    (the last before the jump: none inside the blackout). In the background because a login to a busy TCG host can
    take longer than the jump, and the console, watched meanwhile, must see the new kernel's banner at once."""

    def __init__(self, lab: Any, host: Any) -> None:
        self.lab, self.host = lab, host
        self.lock: Dict[str, Any] = {}
        self.read: Optional[subprocess.Popen[str]] = None
        self.started = self.done = 0.0

    def poll(self) -> None:
        now = time.monotonic()
        if self.read is not None:
            if self.read.poll() is None:
                if now - self.started > LOCK_READ_TIMEOUT:
                    self.stop()
                return
            seen = self.read.communicate()[0] or ""
            self.read, self.done = None, now
            with contextlib.suppress(ValueError):
                self.lock = json.loads(seen) if seen.startswith("{") else self.lock
        elif self.lock.get("phase") != "save" and now - self.done >= LOCK_POLL:
            self.read = subprocess.Popen(self.lab.ssh_argv(self.host, ["cat", "/var/lib/liveupdate-cpr/rollout.lock"]),
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.started = now

    def stop(self) -> None:
        if self.read is not None:
            self.read.kill()
            self.read.wait()
            self.read, self.done = None, time.monotonic()


def after_jump(lab_dir: Path, host_name: str, kill: str, rollout: Sequence[str]) -> Dict[str, Any]:
    from lab.host.fleet import Lab  # the lab's own SSH and power switch

    lab = Lab(lab_dir)
    host = lab.host(host_name)
    console = Path(host.home) / "console.log"
    booted = banners(console)
    with rollout_started(rollout) as playbook:
        # every few seconds only: each SSH login costs the busy TCG host CPU that its own rollout needs
        watch = LockWatch(lab, host)

        def jumped() -> bool:
            if banners(console) > booted:
                return True
            watch.poll()
            return False
        try:
            wait_for("jump of %s (a new kernel banner in %s)" % (host_name, console), jumped, REACH, interval=0.2)
        finally:
            watch.stop()
        lock = watch.lock
        killed_at = time.time()
        if kill == "controller":
            killed = kill_controller(playbook)
        else:
            killed = [int(Path(host.pidfile).read_text())]
            lab.power_off(host)
        output = playbook.communicate(timeout=WAIT)[0]
    return {"host": host_name, "killed": kill, "pids": killed, "killed_at": killed_at,
            "lock_before_the_jump": lock, "rc": playbook.returncode, "output": output}


def before_jump(lab_dir: Path, host_name: str, rollout: Sequence[str]) -> Dict[str, Any]:
    from lab.host.fleet import Lab

    lab = Lab(lab_dir)
    host = lab.host(host_name)
    console = Path(host.home) / "console.log"
    booted, boot_before = banners(console), lab.boot_id(host)
    with rollout_started(rollout) as playbook:
        def flushing() -> List[int]:
            return [pid for pid, argv in ((pid, argv_of(pid)) for pid in all_pids() if _descends_from(pid, playbook.pid))
                    if "Port=%d" % host.port in argv and any(FLUSH_BEFORE_THE_JUMP in word for word in argv)]
        ssh = wait_for("flush before the jump of %s" % host_name, flushing, REACH)
        killed_at = time.time()
        killed = kill_controller(playbook)
        for pid in ssh:  # its last SSH call: whether or not the flush ran, the jump's command is never sent
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        output = playbook.communicate(timeout=WAIT)[0]
    time.sleep(5)  # a jump already under way would show its banner by now
    return {"host": host_name, "killed": "controller", "pids": killed, "ssh_pids": ssh, "killed_at": killed_at,
            "boot_id_before": boot_before, "boot_id_after": lab.boot_id(host),
            "banners_since": banners(console) - booted, "rc": playbook.returncode, "output": output}


def ssh_cut(lab_dir: Path, host_name: str, rollout: Sequence[str]) -> Dict[str, Any]:
    from lab.host.fleet import INSIDE_DIR, Lab

    lab = Lab(lab_dir)
    host = lab.host(host_name)
    boot_before = lab.boot_id(host)
    with rollout_started(rollout) as playbook:
        # blocks on the host until the save holds the VM lock (a VM's record says saving: the plan holds the lock
        # too), then stops it there: the fault lands inside the save's task
        stopped = json.loads(lab.run(host, "python3", INSIDE_DIR + "/inside.py", "stop-module", "--phase", "saving",
                                     "--timeout", str(int(REACH) - 30), timeout=REACH))
        lab.set_link(host, up=False)
        cut_at = time.time()
        try:
            output = playbook.communicate(timeout=WAIT)[0]
            ended_at = time.time()
        finally:
            lab.set_link(host, up=True)
    lab.wait_ssh(host, timeout=600)
    # evidence of what ends the orphan: its signal state as it is let go (signals pending for it in SigPnd/ShdPnd;
    # SigIgn shows SIGHUP ignored while it holds the VM lock), and the host's journal from the cut on once it is gone
    signals = lab.run(host, "grep", "-E", "^(State|PPid|SigPnd|ShdPnd|SigBlk|SigIgn)", "/proc/%d/status" % stopped["pid"],
                      check=False)
    lab.run(host, "kill", "-CONT", str(stopped["pid"]))
    wait_for("end of the module %d on %s" % (stopped["pid"], host_name), lambda: lab.run(
        host, "sh", "-c", "kill -0 %d 2>/dev/null || echo gone" % stopped["pid"]).strip() == "gone", interval=1)
    journal = lab.run(host, "journalctl", "--no-pager", "-o", "short-monotonic", "--since", "@%d" % int(cut_at - 60),
                      check=False, timeout=60)
    # each VM's whole record (state_complete says whether its state file was hashed) and which QEMUs still run
    # (only looked at: a probe would stop and resume the VMs)
    records = lab.run(host, "python3", "-c", "import glob, json; print(json.dumps({p: json.load(open(p)) for p in "
                      "glob.glob('/var/lib/liveupdate-cpr/*.json')}))", check=False)
    return {"host": host_name, "stopped": stopped, "cut_at": cut_at, "rollout_ended_at": ended_at,
            "boot_id_before": boot_before, "boot_id_after": lab.boot_id(host), "rc": playbook.returncode,
            "module_signals_when_let_go": signals, "host_journal_since_the_cut": journal[-8000:],
            "records_after_the_module": records[-8000:],
            "qemus_after_the_module": lab.run(host, "pgrep", "-a", "qemu-system", check=False),
            "output": output}


def main(argv: Optional[Sequence[str]] = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if "--" not in words:
        raise SystemExit("give the rollout's command after --")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fault", choices=["after-jump", "before-jump", "ssh-cut"])
    parser.add_argument("--lab-dir", type=Path, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--kill", choices=["controller", "host"], help="after-jump: what to kill")
    args = parser.parse_args(words[:words.index("--")])
    rollout = words[words.index("--") + 1:]
    if args.fault == "after-jump":
        if not args.kill:
            parser.error("after-jump needs --kill controller or --kill host")
        result = after_jump(args.lab_dir, args.host, args.kill, rollout)
    elif args.fault == "before-jump":
        result = before_jump(args.lab_dir, args.host, rollout)
    else:
        result = ssh_cut(args.lab_dir, args.host, rollout)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
