"""`make demo`: a local save-and-restore round trip of real VMs through Ansible.

Boots three test guests under TCG (one with QMP through -chardev/-mon), runs
lab/round-trip.yml against localhost, then checks from outside every guest
that it resumed rather than rebooted and that its RAM is intact.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.testvm import TestVm, guest_disk, kill_all, probe, qemu_available

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the VMs running afterwards")
    args = parser.parse_args()
    qemu_available()
    base = Path(tempfile.mkdtemp(prefix="lu-demo-", dir="/tmp"))
    qmp_dir, state_dir = base / "qmp", base / "state"
    disk = guest_disk(ROOT / "build" / "cache")
    try:
        vms = [TestVm("demo%d" % i, qmp_dir, disk, qmp_form="chardev" if i == 1 else "qmp").start()
               for i in range(args.vms)]
        before = {vm.name: vm.wait_booted() for vm in vms}
        time.sleep(0.5)
        print("Booted %d guests under TCG; QMP sockets in %s\n" % (len(vms), qmp_dir), flush=True)
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
        play = subprocess.run([shutil.which("ansible-playbook") or "ansible-playbook",
                               "-i", str(ROOT / "tests" / "integration" / "inventory.yml"),
                               str(ROOT / "lab" / "round-trip.yml"),
                               "-e", "qmp_dir=%s state_dir=%s" % (qmp_dir, state_dir)], cwd=ROOT, env=env, check=False)
        if play.returncode != 0:
            print("\nThe playbook failed; the journal and state files are in %s" % state_dir)
            return play.returncode
        print("\nChecked from outside each guest (QMP pmemsave of its RAM):")
        print("%-8s %-18s %-22s %s" % ("VM", "nonce", "passes before->after", "RAM"))
        ok = True
        for vm in vms:
            time.sleep(0.2)
            after = probe(vm)
            resumed = after.nonce == before[vm.name].nonce and after.counter > before[vm.name].counter
            verified = resumed and after.pattern_ok
            ok &= verified
            print("%-8s %-18s %-22s %s" % (vm.name, "%x %s" % (after.nonce, "same" if resumed else "CHANGED"),
                                           "%d -> %d" % (before[vm.name].counter, after.counter),
                                           "RAM verified" if verified else "RAM BROKEN: " + after.pattern_detail))
        return 0 if ok else 1
    finally:
        if args.keep:
            print("\nVMs left running; QMP sockets in %s" % qmp_dir)
        else:
            kill_all(base)
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
