"""Benchmark: restore at boot against Ansible's restore, side by side, from one lab run's report.

Not a test. The lab's rollout gives one host liveupdate_restore_at_boot=true and another false, with the same
kind of host and VMs (`make demo`: hv1 and hv2; the molecule `kexec` scenario: the same). This reads that run's
report and prints, per host, the blackout, the host's part and ours, and the ratio of the two paths.

    python bench/restore_at_boot.py build/demo/latest.json
    python bench/restore_at_boot.py /tmp/liveupdate-molecule-kexec/reports/latest.json

The host's part runs from the kexec jump (old boot's clock) to the restore unit's start (systemd's
ExecMainStartTimestamp, new boot's clock), or for Ansible's restore to its reconnect: +-1 s across the jump.
Ours, for restore at boot, runs from the unit's start to the host's last VM RESUME, on one clock. The host's part
splits at systemd's start (UserspaceTimestamp): before it the kernel and the initramfs, after it systemd's boot up to
the unit.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from lab.host.evidence import blackout_split  # noqa: E402


def rows(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    found = []
    for host in report["hosts"]:
        split = [row for row in blackout_split(host) if row["blackout"] is not None]
        reboot = host.get("reboot") or {}
        if not split or not reboot.get("jumped_at"):
            continue
        at_boot = all(row["restored_by"] == "boot unit" for row in split)
        last_resume = max(float(vm["resumed_at"]) for vm in host["vms"] if vm.get("resumed_at"))
        unit = float(reboot.get("unit_started_at") or 0)
        found.append({
            "host": host["host"], "path": "restore at boot" if at_boot else "Ansible's restore", "vms": len(split),
            "blackout": statistics.mean(float(row["blackout"]) for row in split),
            "host_part": statistics.mean(float(row["reboot"]) for row in split),
            "ours": (last_resume - unit) if at_boot and unit else None,
            "kernel_start": float(reboot["booted_at"]) - float(reboot["jumped_at"]),
            "systemd": (float(reboot["userspace_started_at"]) - float(reboot["jumped_at"]))
            if float(reboot.get("userspace_started_at") or 0) else None,
            "sshd": (float(reboot["sshd_ready_at"]) - float(reboot["jumped_at"]))
            if float(reboot.get("sshd_ready_at") or 0) else None,
            "reconnect": float(reboot["answered_at"]) - float(reboot["jumped_at"]),
        })
    return found


def table(found: List[Dict[str, Any]]) -> str:
    def seconds(value: Any) -> str:
        return "-" if value is None else "%.1f s" % value

    lines = ["| host | path | VMs | mean blackout | host's part | ours: unit start to last RESUME | new kernel | "
             "systemd start | sshd ready | Ansible reconnected |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in found:
        lines.append("| %s | %s | %d | %s | %s | %s | +%s | +%s | +%s | +%s |" % (
            row["host"], row["path"], row["vms"], seconds(row["blackout"]), seconds(row["host_part"]),
            "-" if row["ours"] is None else "%.2f s" % row["ours"], seconds(row["kernel_start"]),
            seconds(row["systemd"]), seconds(row["sshd"]), seconds(row["reconnect"])))
    at_boot = [row["blackout"] for row in found if row["path"] == "restore at boot"]
    ansible = [row["blackout"] for row in found if row["path"] != "restore at boot"]
    if at_boot and ansible:
        lines.append("")
        lines.append("blackout with restore at boot / with Ansible's restore: %.2f (goal <= 0.4)" % (
            statistics.mean(at_boot) / statistics.mean(ansible)))
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    print(table(rows(json.loads(Path(sys.argv[1]).read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
