"""What the lab checks from outside the nested guests, shared by `make demo`, molecule and the benchmark.

- Resumed, not rebooted: the guest's RDTSC nonce, written once at its start, is unchanged.
- It ran on: its pass counter rose. Its RAM is intact: every page holds the pattern for that count.
- Its blackout, two ways: from QEMU's own STOP/RESUME event times (the report), and from the guest's
  counter, which only advances while the guest runs: elapsed time minus passes / tick rate.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from lab.host.image import GUEST_HZ


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
            "counter_before": before["counter"], "counter_now": now["counter"],
            "stopped_seconds_by_counter": counter_gap(before, now)}


def counter_gap(before: Dict[str, Any], now: Dict[str, Any], hz: float = GUEST_HZ) -> Optional[float]:
    """Seconds the guest did not run between two reads, by its own pass counter (host clock, about ±1 s)."""
    if "read_at" not in before or "read_at" not in now:
        return None
    return round((now["read_at"] - before["read_at"]) - (now["counter"] - before["counter"]) / hz, 2)


def blackout_split(host_report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each VM's blackout (QEMU's STOP to RESUME), split into the host's reboot and what our tooling adds.

    The reboot is the jump into the new kernel until SSH answered, on the host's clock; the rest of the
    blackout is ours: saving the VMs after the first pause, Ansible reconnecting, restoring."""
    reboot = host_report.get("reboot") or {}
    reboot_seconds = (float(reboot["answered_at"]) - float(reboot["jumped_at"])) if reboot else None
    rows = []
    for vm in host_report.get("vms", []):
        blackout = vm.get("blackout_seconds")
        tooling = None if blackout is None or reboot_seconds is None else float(blackout) - reboot_seconds
        rows.append({"vm": vm["vm"], "blackout": blackout, "reboot": reboot_seconds, "tooling": tooling,
                     "state_size": vm.get("state_size"), "mode": vm.get("mode")})
    return rows
