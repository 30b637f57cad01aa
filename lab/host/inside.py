"""Lab steps that run inside a virtual hypervisor host (copied there with lab/guest_probe.py).

    python3 inside.py pmem                          # /dev/dax0.0 on the host's pmem region
    python3 inside.py start --host hv1 --vms 2      # nested test guests with RAM on it
    python3 inside.py probe                         # each nested guest's state, as JSON
    python3 inside.py start --host hv3 --vms 1 --first 3 --client-socket /var/lib/liveupdate-lab/peer.sock
    python3 inside.py serve --client-socket /var/lib/liveupdate-lab/peer.sock
                                                    # one more guest, a client of a socket that only this boot serves
    python3 inside.py stop-module [--phase saving]  # SIGSTOP the module that holds the VM lock, once one does

Standard library only: it runs before host_prepare has installed anything.
"""

from __future__ import annotations

import argparse
import glob
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

try:
    from guest_probe import probe_socket, wait_started  # inside a host, beside this file
except ImportError:  # pragma: no cover - imported from the repository (tests)
    from lab.guest_probe import probe_socket, wait_started

HOME = "/var/lib/liveupdate-lab"
QMP_DIR = "/run/liveupdate-lab/qmp"
DAX = "/dev/dax0.0"
GUEST_DISK = HOME + "/cpr-test-guest.img"
QEMU = "/usr/bin/qemu-system-x86_64"
STATE_DIR = "/var/lib/liveupdate-cpr"


def pmem() -> Dict[str, Any]:
    """Turn the host's pmem region (memmap= or an emulated NVDIMM) into a devdax device, once."""
    if not os.path.exists(DAX):
        subprocess.run(["ndctl", "create-namespace", "-f", "-e", "namespace0.0", "-m", "devdax", "--align", "2M"],
                       check=True, stdout=subprocess.DEVNULL, timeout=60)
    deadline = time.monotonic() + 20
    while not os.path.exists(DAX):
        if time.monotonic() > deadline:
            raise SystemExit("no %s after ndctl create-namespace" % DAX)
        time.sleep(0.1)
    with open("/sys/bus/dax/devices/dax0.0/size") as size:
        return {"device": DAX, "size": int(size.read())}


def vm_argv(name: str, ram_mb: int, ram: str, offset_mb: int, client_socket: str = "") -> List[str]:
    if ram == "dax":
        backend = "memory-backend-file,id=ram0,size=%dM,mem-path=%s,share=on,align=2M,offset=%dM" % (
            ram_mb, DAX, offset_mb)
    else:  # tmpfs: does not survive a reboot, which preflight must refuse
        backend = "memory-backend-file,id=ram0,size=%dM,mem-path=/dev/shm/%s.ram,share=on" % (ram_mb, name)
    return [QEMU, "-name", "guest=%s,debug-threads=on" % name, "-accel", "tcg", "-machine", "q35",
            "-m", "%dM" % ram_mb, "-nodefaults", "-display", "none",
            "-drive", "file=%s/vms/%s.img,format=raw,if=ide" % (HOME, name),
            "-object", backend, "-machine", "memory-backend=ram0",
            "-qmp", "unix:%s/%s.qmp,server=on,wait=off" % (QMP_DIR, name)] + (
                ["-chardev", "socket,id=peer,path=%s" % client_socket] if client_socket else [])


def serve_socket(path: str) -> None:
    """A listener at ``path`` for this boot only: its socket file stays on disk after a reboot, refusing connections,
    so a guest that connects to it as a client starts now and cannot be restarted after the reboot."""
    if os.path.exists(path):
        os.unlink(path)
    code = ("import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(8)\n"
            "held = []\nwhile True:\n    held.append(s.accept()[0])\n")
    subprocess.run(["systemd-run", "--unit", "lab-peer-socket", "--collect", "--quiet", "--", sys.executable, "-c", code,
                    path], check=True, timeout=120)
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit("no listener at %s" % path)
        time.sleep(0.1)


def zero_dax_range(offset_mb: int, size_mb: int) -> None:
    """A new VM starts from zeroed RAM; pmem would otherwise hand it an earlier guest's memory."""
    fd = os.open(DAX, os.O_RDWR)
    try:
        with mmap.mmap(fd, size_mb << 20, offset=offset_mb << 20) as ram:  # devdax can only be mmapped
            ram[:] = bytes(size_mb << 20)
    finally:
        os.close(fd)


def start(host: str, vms: int, ram_mb: int, shm: List[str], first: int = 1, client_socket: str = ""
          ) -> List[Dict[str, Any]]:
    os.makedirs(QMP_DIR, mode=0o700, exist_ok=True)
    os.makedirs(HOME + "/vms", mode=0o700, exist_ok=True)
    if client_socket:
        serve_socket(client_socket)
    started = []
    for index in range(first - 1, first - 1 + vms):
        name = "%s-vm%d" % (host, index + 1)
        shutil.copyfile(GUEST_DISK, "%s/vms/%s.img" % (HOME, name))
        if name not in shm:
            zero_dax_range(index * ram_mb, ram_mb)
        # a transient unit without Restart=, as a hypervisor manager without libvirt would start it
        subprocess.run(["systemd-run", "--unit", "lab-" + name, "--collect", "--quiet", "--property=Type=exec", "--"]
                       + vm_argv(name, ram_mb, "shm" if name in shm else "dax", index * ram_mb, client_socket),
                       check=True, timeout=120)
        started.append(name)
    return [wait_booted(name) for name in started]


# bounds, not timings: on a TCG host busy installing a kernel beside two others, a nested guest has needed over 60 s
def wait_booted(name: str, timeout: float = 240) -> Dict[str, Any]:
    path = "%s/%s.qmp" % (QMP_DIR, name)
    return wait_started(lambda: probe_one(path), name, timeout, 0.2)


def probe_one(path: str) -> Dict[str, Any]:
    state = probe_socket(path)
    state["vm"] = os.path.basename(path)[:-len(".qmp")]
    state["qmp"] = path
    return state


def probe() -> List[Dict[str, Any]]:
    found = []
    for path in sorted(glob.glob(QMP_DIR + "/*.qmp")):
        try:
            found.append(probe_one(path))
        except OSError as exc:
            found.append({"vm": os.path.basename(path)[:-len(".qmp")], "qmp": path, "status": "unreachable",
                          "error": str(exc)})
    return found


def records(state_dir: str) -> Dict[str, str]:
    """Each journal record's phase, by VM."""
    phases = {}
    for path in glob.glob(os.path.join(state_dir, "*.json")):
        try:
            with open(path) as handle:
                phases[os.path.basename(path)[:-len(".json")]] = json.load(handle)["phase"]
        except (OSError, ValueError, KeyError):
            continue  # being replaced right now
    return phases


def vms_lock_holder(state_dir: str) -> Optional[int]:
    """The pid holding STATE_DIR/.vms.lock (flock): the module that saves or restores the host's VMs right now."""
    try:
        inode = os.stat(os.path.join(state_dir, ".vms.lock")).st_ino
    except OSError:
        return None
    with open("/proc/locks") as handle:
        for line in handle:
            fields = line.split()
            if "FLOCK" in fields and fields[-3].rsplit(":", 1)[-1] == str(inode):
                return int(fields[-4])
    return None


def vms_lock_waiters(state_dir: str) -> List[int]:
    """The pids that have STATE_DIR/.vms.lock open without holding it: saves or restores waiting for the holder."""
    path = os.path.join(state_dir, ".vms.lock")
    holder = vms_lock_holder(state_dir)
    waiting = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == holder:
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % entry)
        except OSError:
            continue  # gone meanwhile
        for fd in fds:
            try:
                if os.readlink("/proc/%s/fd/%s" % (entry, fd)) == path:
                    waiting.append(int(entry))
                    break
            except OSError:
                continue
    return waiting


def _is_boot_unit(pid: int) -> bool:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return b"liveupdate-cpr-restore" in handle.read()  # boot_restore.ENTRY_POINT
    except OSError:
        return False


def _in_phase(phases: Dict[str, str], vm: str, phase: str) -> bool:
    return phases.get(vm) == phase if vm else phase in phases.values()


def stop_module(state_dir: str, vm: str = "", phase: str = "", timeout: float = 600) -> Dict[str, Any]:
    """SIGSTOP the module holding the VM lock, once one does (and once vm's record, or without vm any record, is in
    phase, when given: the plan holds the lock too, while it reads the VMs, and a save is known by its records).

    Polled every 5 ms on the host itself, so that the stop lands within a module that runs for well under a second.
    The restore unit of this boot, which may still hold the lock for its guests' clocks, is not a module: left alone.
    Returns its pid and every record's phase as they were once it stood still: the caller checks the fault landed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        module = vms_lock_holder(state_dir)
        if module and _is_boot_unit(module):
            module = None
        if module and (not phase or _in_phase(records(state_dir), vm, phase)):
            os.kill(module, signal.SIGSTOP)
            return {"pid": module, "records": records(state_dir)}
        time.sleep(0.005)
    raise TimeoutError("no module held %s/.vms.lock%s within %d s" % (
        state_dir, " with %s in phase %s" % (vm or "a VM", phase) if phase else "", timeout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["pmem", "start", "probe", "serve", "stop-module"])
    parser.add_argument("--host", default="hv")
    parser.add_argument("--vms", type=int, default=2)
    parser.add_argument("--ram-mb", type=int, default=16)
    parser.add_argument("--shm", action="append", default=[], help="VM names whose RAM goes on tmpfs")
    parser.add_argument("--first", type=int, default=1, help="the number of the first VM (its pmem range follows)")
    parser.add_argument("--client-socket", default="", help="serve this socket now, and make the VMs its clients")
    parser.add_argument("--state-dir", default=STATE_DIR, help="stop-module: the collection's state dir")
    parser.add_argument("--timeout", type=float, default=600, help="stop-module: how long to wait for a module")
    parser.add_argument("--phase", default="", help="stop-module: only once a VM's journal record is in this phase")
    args = parser.parse_args()
    if args.action == "pmem":
        result: Any = pmem()
    elif args.action == "start":
        result = start(args.host, args.vms, args.ram_mb, args.shm, args.first, args.client_socket)
    elif args.action == "stop-module":
        result = stop_module(args.state_dir, phase=args.phase, timeout=args.timeout)
    elif args.action == "serve":  # the socket a client VM needs, back on this boot (a backend restarted)
        serve_socket(args.client_socket)
        result = {"serving": args.client_socket}
    else:
        result = probe()
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
