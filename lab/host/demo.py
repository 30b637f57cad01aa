"""`make demo`: the whole mission on virtual hypervisor hosts that really kexec into a newer kernel.

Builds (or finds) the lab image, boots 2 Debian 13 hosts under TCG, each running 2 nested test
guests whose RAM is on /dev/dax0.0, prepares the hosts, and runs the real
playbooks/kernel-live-update.yml with kexec, one host per batch. Then it checks every nested guest
from outside and prints each host's kernel before -> after, each VM's blackout split into the host's
reboot and our tooling, the blackout the guest itself saw by its own clock, its state size, and
"RAM verified". The lab is torn down unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from lab.host.evidence import STALL_TOLERANCE_SECONDS, blackout_split, guest_verdict, stall_agreement, timeline
from lab.host.fleet import Lab

ROOT = Path(__file__).resolve().parents[2]


def playbook(inventory: Path, name: str, extra: Sequence[str] = ()) -> float:
    started = time.monotonic()
    command = [shutil.which("ansible-playbook") or "ansible-playbook", "-i", str(inventory), name]
    for item in extra:
        command += ["-e", item]
    print("\n$ %s" % " ".join(command[1:]), flush=True)
    result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")),
                            check=False, timeout=3600)
    if result.returncode != 0:
        raise SystemExit("%s failed (rc %d); the lab is kept for inspection when --keep is given." % (
            name, result.returncode))
    return time.monotonic() - started


def summary(lab: Lab, now: Dict[str, Any], report: Dict[str, Any]) -> Tuple[List[str], bool]:
    """The result, from the lab's record of each host before the run (lab.json) and a probe now."""
    lines = ["", "Checked from outside every nested guest (QMP pmemsave of its RAM, inside each host):", ""]
    hosts = {entry["host"]: entry for entry in report["hosts"]}
    ok = True
    for host in lab.hosts():
        if host.name in lab.state.get("fallback", []):
            continue  # the lab's failure cases, not part of the rollout
        entry = hosts.get(host.name, {})
        changed = now[host.name]["boot_id"] != host.boot_id
        reboot = entry.get("reboot") or {}
        lines.append("%s  kernel %s -> %s   boot id %s   %s" % (
            host.name, host.kernel, now[host.name]["kernel"], "changed" if changed else "SAME",
            "%s: down %.1f s, boot to SSH %.1f s" % (
                reboot.get("method"), float(reboot["booted_at"]) - float(reboot["jumped_at"]),
                float(reboot["answered_at"]) - float(reboot["booted_at"])) if reboot else ""))
        ok &= changed and now[host.name]["kernel"] != host.kernel
        phases = entry.get("phases") or {}
        spans = ["%s %.0f s" % (name, float(span["end"]) - float(span["start"]))
                 for name, span in sorted(phases.items(), key=lambda item: float(item[1].get("start", 0)))
                 if "end" in span and "start" in span]
        lines.append("  phases: " + ", ".join(spans))
        lines.append("  timeline after the jump (host clocks, +-1 s): " + ", ".join(
            "%s %.1f s" % event for event in timeline(entry)))
        guests = {guest["vm"]: guest for guest in now[host.name]["guests"]}
        split = {row["vm"]: row for row in blackout_split(entry)}
        reported = {vm["vm"]: vm for vm in entry.get("vms", [])}
        lines.append("  %-9s %-9s %-10s %-11s %-10s %-10s %-11s %-16s %-14s %s" % (
            "VM", "blackout", "= host*", "+ ours", "restored", "guest saw", "state", "QEMU", "passes", "RAM"))
        for vm in host.vms:
            verdict = guest_verdict(vm, guests.get(vm["vm"]))
            agreement = stall_agreement(reported.get(vm["vm"], {}), guests.get(vm["vm"]) or {})
            row = split.get(vm["vm"], {})
            ok &= verdict["ok"] and agreement["ok"]
            lines.append("  %-9s %-9s %-10s %-11s %-10s %-10s %-11s %-16s %-14s %s" % (
                vm["vm"], _seconds(row.get("blackout")), _seconds(row.get("reboot")), _seconds(row.get("tooling")),
                "at boot" if row.get("restored_by") == "boot unit" else "by Ansible",
                "%d s%s" % (agreement["guest_stall"], "" if agreement["ok"] else " (!)")
                if "guest_stall" in agreement else "-",
                "{:,} B".format(row["state_size"]) if row.get("state_size") else "-",
                # each as the running QEMU reported it over QMP: at its save, and after its restore
                "%s -> %s" % (reported.get(vm["vm"], {}).get("qemu_version", "?"),
                              reported.get(vm["vm"], {}).get("restored_qemu_version", "?")),
                "%s -> %s" % (verdict.get("counter_before", "?"), verdict.get("counter_now", "?")), verdict["why"]))
            if not agreement["ok"]:
                lines.append("    blackout does not match the guest: %s" % agreement["why"])
        lines.append("")
    lines.append("* host: from the kexec jump until the restore unit started (restored at boot: systemd's own timestamp),")
    lines.append("  or until a real SSH command answered on the new boot (restored by Ansible); ours: the rest, saving")
    lines.append("  after the first pause and restoring. Spans across the jump mix two boots' clocks: +-1 s.")
    lines.append("guest saw: the guest's own longest stall, by its CMOS clock, read from its RAM; it must match the")
    lines.append("  blackout (QEMU's STOP to RESUME) within %.0f s." % STALL_TOLERANCE_SECONDS)
    lines.append("RESULT: %s" % ("every host on its new kernel, every VM resumed with its RAM verified" if ok
                                 else "FAILED (see above)"))
    return lines, ok


def _seconds(value: Any) -> str:
    return "-" if value is None else "%.2f s" % float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/liveupdate-demo"))
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--vms", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    parser.add_argument("--ansible-restore", action="append", default=None, metavar="HOST",
                        help="a host whose VMs Ansible restores (liveupdate_restore_at_boot=false), the others' are "
                             "restored at boot: both paths side by side in one run (default: hv2)")
    parser.add_argument("--summary-of", metavar="REPORT_DIR", type=Path,
                        help="only print the summary of the lab in --dir after a run that wrote REPORT_DIR")
    args = parser.parse_args()
    if args.summary_of:
        lab = Lab(args.dir)
        lines, ok = summary(lab, lab.probe(), json.loads((args.summary_of / "latest.json").read_text()))
        print("\n".join(lines))
        return 0 if ok else 1
    lab = Lab(args.dir)
    lab.destroy()
    lab = Lab(args.dir)
    try:
        started = time.monotonic()
        state = lab.create(args.hosts, args.vms, [], [], 0)
        print("Lab up in %.0f s: %d hosts, booted in %s s; image %s" % (
            time.monotonic() - started, args.hosts,
            ", ".join("%s %.0f" % item for item in state["boot_seconds"].items()),
            "%s (built once in %.0f s)" % (state["image"]["kernel_release"], state["image"]["built_seconds"])),
            flush=True)
        inventory = args.dir / "inventory.yml"
        reports = ROOT / "build" / "demo"  # outlives the lab's teardown
        timings = {"prepare": playbook(inventory, "playbooks/prepare_hosts.yml")}
        by_ansible = ["hv2"] if args.ansible_restore is None else args.ansible_restore
        timings["rollout"] = playbook(inventory, "playbooks/kernel_live_update.yml", [
            "liveupdate_reboot_method=kexec", "liveupdate_batch=1", "liveupdate_report_dir=%s" % reports,
            "liveupdate_update_qemu=true",
            "liveupdate_restore_at_boot={{ inventory_hostname not in %s }}" % json.dumps(by_ansible)])
        now = lab.probe()
        report = json.loads((reports / "latest.json").read_text())
        lines, ok = summary(lab, now, report)
        lines.append("Ansible: prepare-hosts %.0f s, kernel-live-update %.0f s. Report: %s/latest.html" % (
            timings["prepare"], timings["rollout"], reports))
        print("\n".join(lines))
        (reports / "demo-summary.txt").write_text("\n".join(lines) + "\n")
        return 0 if ok else 1
    finally:
        if args.keep:
            print("\nLab kept in %s; `python -m lab.host.fleet destroy --dir %s` removes it." % (args.dir, args.dir))
        else:
            lab.destroy()


if __name__ == "__main__":
    sys.exit(main())
