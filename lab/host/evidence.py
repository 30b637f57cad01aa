"""What the lab checks from outside the nested guests, shared by `make demo`, molecule and the benchmark.

- Resumed, not rebooted: the guest's RDTSC nonce, written once at its start, is unchanged.
- It ran on: its pass counter rose. Its RAM is intact: every page holds the pattern for that count.
- Its blackout, from QEMU's own STOP/RESUME event times (the report), against the guest's own view: its
  longest stall, the most seconds its CMOS clock moved between two of its passes. The clock follows the
  host's wall clock while the VM is stopped; the guest writes the stall into its RAM, read from outside.
  The pass counter alone cannot tell it: under TCG the guest loses timer ticks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

# the lab reads the report with the collection's own code (tests and molecule put it on sys.path already)
sys.path.append(str(Path(__file__).resolve().parents[2] / ".dev-collections"))
from ansible_collections.liveupdate.cpr.plugins.module_utils.report import reboot_timeline

timeline = reboot_timeline  # the lab's name for it: make demo's summary prints it

# The guest's CMOS clock counts whole seconds (up to 1 s lost at each end of a stall), and QEMU starts it up to a
# second behind the host's clock; seen 2.2 s off with three TCG lab hosts busy on two CPUs.
STALL_TOLERANCE_SECONDS = 3.0
SECONDS_PER_DAY = 86400


def guest_verdict(before: Dict[str, Any], now: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if now is None or now.get("status") == "unreachable":
        return {"vm": before["vm"], "ok": False, "why": "not running (no QMP answer)"}
    resumed = now["nonce"] == before["nonce"]
    advanced = now["counter"] > before["counter"]
    ok = resumed and advanced and now["pattern_ok"] and now["status"] == "running"
    why = ("RAM verified" if ok else "; ".join(reason for check, reason in (
        (resumed, "nonce changed: it rebooted"), (advanced, "counter did not rise"),
        (now["pattern_ok"], "pattern broken: " + now["pattern_detail"]),
        (now["status"] == "running", "status " + now["status"])) if not check))
    return {"vm": before["vm"], "ok": ok, "why": why, "nonce_same": resumed,
            "counter_before": before["counter"], "counter_now": now["counter"]}


def blackout_split(host_report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each VM's blackout (QEMU's STOP to RESUME), split into the host's part and ours.

    The host's part runs from the jump into the new kernel until the restore unit started (systemd's own
    ExecMainStartTimestamp), for a VM the boot unit restored; for a VM Ansible restored, until a real SSH command
    answered. The rest is ours: saving after the first pause, and from that moment to the VM's RESUME.
    The jump is on the old boot's clock, the rest on the new boot's, which starts from the RTC in whole seconds:
    a figure that spans the jump is good to about 1 s. `after_start` (that moment to RESUME) is on one clock."""
    reboot = host_report.get("reboot") or {}
    rows = []
    for vm in host_report.get("vms", []):
        blackout = vm.get("blackout_seconds")
        by_unit = vm.get("restored_by") == "boot unit" and float(reboot.get("unit_started_at") or 0) > 0
        end = reboot.get("unit_started_at") if by_unit else reboot.get("answered_at")
        host_part = float(end) - float(reboot["jumped_at"]) if reboot and end else None
        tooling = None if blackout is None or host_part is None else float(blackout) - host_part
        after_start = (float(vm["resumed_at"]) - float(end)) if end and vm.get("resumed_at") else None
        rows.append({"vm": vm["vm"], "blackout": blackout, "reboot": host_part, "tooling": tooling,
                     "after_start": after_start, "restored_by": vm.get("restored_by"),
                     "state_size": vm.get("state_size"), "mode": vm.get("mode")})
    return rows


def stall_agreement(report_vm: Dict[str, Any], now: Dict[str, Any]) -> Dict[str, Any]:
    """Does the report's blackout match the guest's longest stall, in length and in when it ended?

    report_vm is a VM of the report (blackout_seconds, resumed_at: QEMU's RESUME, epoch seconds); now is the
    guest's state read from its RAM (longest_stall, longest_stall_ended: its CMOS clock, UTC seconds of day)."""
    blackout, resumed_at = report_vm.get("blackout_seconds"), report_vm.get("resumed_at")
    if blackout is None or resumed_at is None or now.get("longest_stall") is None:
        return {"ok": False, "why": "no blackout in the report, or no stall read from the guest"}
    length_off = now["longest_stall"] - float(blackout)
    # the CMOS clock is UTC (QEMU's default -rtc base=utc), in seconds since midnight
    ended_off = (now["longest_stall_ended"] - float(resumed_at)) % SECONDS_PER_DAY
    ended_off = ended_off - SECONDS_PER_DAY if ended_off > SECONDS_PER_DAY / 2 else ended_off
    # a guest on a starved host makes its first pass after its RESUME late: by as much as its stall ended late (the
    # second check bounds that), the stall outlasts the blackout
    late = max(0.0, ended_off)
    ok = abs(length_off - late) <= STALL_TOLERANCE_SECONDS and abs(ended_off) <= STALL_TOLERANCE_SECONDS + 1
    return {"ok": ok, "guest_stall": now["longest_stall"], "blackout": float(blackout),
            "length_off": round(length_off, 2), "ended_off": round(ended_off, 2),
            "why": "guest stood still %d s, report says %.2f s, ending %+.1f s from its RESUME" % (
                now["longest_stall"], float(blackout), ended_off)}
