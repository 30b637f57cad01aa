# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout report: JSON for machines, a table for the terminal, HTML with an SVG timeline for people."""

from __future__ import annotations

import fcntl
import html
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr

PHASE_COLOURS = {"preflight": "#9aa5b1", "stage": "#5b8def", "install": "#2f5fc4", "save": "#f0a830", "reboot": "#d9534f",
                 "relaunch": "#e0703a", "restore": "#3fa66b", "verify": "#7b61c4"}
BATCH_COLOURS = ("#eef3fb", "#fbf6ee")


@dataclass
class ReportOptions:
    report_dir: str = ""
    run: Dict[str, Any] = field(default_factory=dict)
    hosts: List[Dict[str, Any]] = field(default_factory=list)
    check_mode: bool = False


def _blackouts(host: Dict[str, Any]) -> List[float]:
    return [float(vm["blackout_seconds"]) for vm in host.get("vms", []) if vm.get("blackout_seconds") is not None]


def clocks(host: Dict[str, Any]) -> str:
    """How many resumed guests had their clock set, and the largest offset it fixed: "2/2 set (-41.2 s)"."""
    seen = [vm["guest_clock"] for vm in host.get("vms", []) if isinstance(vm.get("guest_clock"), dict)]
    if not seen:
        return "-"
    synced = [c for c in seen if c.get("synced")]
    fixed = [abs(float(c["offset_before_seconds"])) for c in synced if c.get("offset_before_seconds") is not None]
    text = "%d/%d set" % (len(synced), len(seen))
    return text + (" (up to %.1f s off)" % max(fixed) if fixed else "")


def health(host: Dict[str, Any]) -> str:
    """The health gates of a host's VMs: "2/2 passed", or the VMs and gates that failed: "failed: db1 guest_command"."""
    seen = {vm["vm"]: vm["health"] for vm in host.get("vms", []) if isinstance(vm.get("health"), dict)}
    failed = ["%s %s" % (vm, ",".join(g["gate"] for g in gates.get("gates", []) if not g.get("passed")))
              for vm, gates in sorted(seen.items()) if gates.get("passed") is False]
    if failed:
        return "failed: " + "; ".join(failed)
    return "%d/%d passed" % (len(seen), len(seen)) if seen else "-"


def table(hosts: Sequence[Dict[str, Any]]) -> str:
    rows = [("host", "batch", "status", "kernel", "QEMU", "VMs", "max blackout", "state", "guest clocks", "health")]
    for host in hosts:
        blackouts = _blackouts(host)
        kernel = host.get("kernel_before", "?")
        if host.get("kernel_after") and host.get("kernel_after") != kernel:
            kernel = "%s -> %s" % (kernel, host["kernel_after"])
        qemu = ",".join(sorted(set(host.get("qemu_before") or []))) or "-"
        after = ",".join(sorted(set(host.get("qemu_after") or [])))
        if after and after != qemu:
            qemu = "%s -> %s" % (qemu, after)
        states = [int(vm.get("state_size") or 0) for vm in host.get("vms", [])]
        rows.append((host.get("host", "?"), str(host.get("batch", "-")), host.get("status", "?"), kernel, qemu,
                     str(len(host.get("vms", []))), "%.3f s" % max(blackouts) if blackouts else "-",
                     "%d KiB" % (sum(states) // 1024) if states else "-", clocks(host), health(host)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    timelines = ["%s: %s" % (host.get("host", "?"), ", ".join("%s +%.1f s" % event for event in events))
                 for host, events in ((host, reboot_timeline(host)) for host in hosts) if events]
    if timelines:
        lines += ["", "Reboot timeline, seconds after the jump (the host's clocks; across the jump +-1 s):"] + timelines
    return "\n".join(lines)


def reboot_timeline(host_report: Dict[str, Any]) -> List[Tuple[str, float]]:
    """The host's reboot as (event, seconds after the jump): the new kernel, systemd's start (the initramfs done), the
    restore unit, each VM's RESUME, sshd ready, Ansible's reconnect. Seconds after the jump span two boots' clocks:
    about 1 s."""
    reboot = host_report.get("reboot") or {}
    if not reboot.get("jumped_at"):
        return []
    jumped = float(reboot["jumped_at"])
    events = [("new kernel", reboot.get("booted_at")), ("systemd start", reboot.get("userspace_started_at")),
              ("restore unit start", reboot.get("unit_started_at")),
              ("sshd ready", reboot.get("sshd_ready_at")), ("Ansible reconnected", reboot.get("answered_at"))]
    events += [("%s RESUME (%s)" % (vm["vm"], vm.get("restored_by") or "?"), vm.get("resumed_at"))
               for vm in host_report.get("vms", [])]
    return sorted(((name, float(at) - jumped) for name, at in events if at and float(at) > 0),
                  key=lambda event: event[1])


def _span(hosts: Sequence[Dict[str, Any]]) -> Tuple[float, float]:
    stamps: List[float] = []
    for host in hosts:
        for phase in (host.get("phases") or {}).values():
            stamps.extend(float(phase[k]) for k in ("start", "end") if phase.get(k))
        for vm in host.get("vms", []):
            stamps.extend(float(vm[k]) for k in ("paused_at", "resumed_at") if vm.get(k))
    if not stamps:
        return 0.0, 1.0
    return min(stamps), max(*stamps, min(stamps) + 1.0)


def timeline_svg(hosts: Sequence[Dict[str, Any]]) -> str:
    """Hosts as rows of phase bars, each VM as a pause-to-resume bar under its host, batches shaded."""
    start, end = _span(hosts)
    left, width, row_height = 170, 760, 16
    rows: List[str] = []
    y = 30

    def x(stamp: float) -> float:
        return left + (stamp - start) / (end - start) * width

    for host in hosts:
        vms = host.get("vms", [])
        height = row_height * (1 + len(vms)) + 8
        shade = BATCH_COLOURS[int(host.get("batch") or 0) % 2]
        rows.append('<rect x="0" y="%d" width="%d" height="%d" fill="%s"/>' % (y - 4, left + width + 10, height, shade))
        rows.append('<text x="4" y="%d" font-weight="bold">%s (batch %s)</text>' % (
            y + 11, html.escape(str(host.get("host"))), html.escape(str(host.get("batch", "-")))))
        for name, phase in (host.get("phases") or {}).items():
            if phase.get("start") and phase.get("end"):
                x0, x1 = x(float(phase["start"])), x(float(phase["end"]))
                rows.append('<rect x="%.1f" y="%d" width="%.1f" height="12" fill="%s"><title>%s %s: %.2f s</title></rect>' % (
                    x0, y, max(x1 - x0, 1.0), PHASE_COLOURS.get(name, "#999"), html.escape(str(host.get("host"))),
                    html.escape(name), float(phase["end"]) - float(phase["start"])))
        for vm in vms:
            y += row_height
            rows.append('<text x="16" y="%d">%s</text>' % (y + 10, html.escape(str(vm.get("vm")))))
            if vm.get("paused_at") and vm.get("resumed_at"):
                x0, x1 = x(float(vm["paused_at"])), x(float(vm["resumed_at"]))
                vm_bar = '<rect x="%.1f" y="%d" width="%.1f" height="10" fill="#222"><title>%s paused %.3f s</title></rect>'
                cells = (x0, y + 1, max(x1 - x0, 1.5), html.escape(str(vm.get("vm"))), float(vm.get("blackout_seconds") or 0))
                rows.append(vm_bar % cells)
        y += row_height + 12
    axis = ['<line x1="%d" y1="18" x2="%d" y2="18" stroke="#444"/>' % (left, left + width)]
    for tick in range(6):
        stamp = start + (end - start) * tick / 5
        axis.append('<text x="%.1f" y="12" text-anchor="middle">+%.1f s</text>' % (x(stamp), stamp - start))
    legend = " ".join('<tspan fill="%s">&#9632; %s</tspan>' % (colour, name) for name, colour in PHASE_COLOURS.items())
    rows.append('<text x="4" y="%d">%s <tspan fill="#222">&#9632; VM paused</tspan></text>' % (y + 8, legend))
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">%s%s</svg>'
            % (left + width + 20, y + 20, "".join(axis), "".join(rows)))


def html_page(run: Dict[str, Any], hosts: Sequence[Dict[str, Any]]) -> str:
    return """<!doctype html><html><head><meta charset="utf-8"><title>liveupdate.cpr rollout %(run)s</title>
<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em}</style></head><body>
<h1>Live kernel update %(run)s</h1><p>%(what)s</p>%(svg)s<h2>Summary</h2><pre>%(table)s</pre>
<h2>Data</h2><pre>%(json)s</pre></body></html>""" % {
        "run": html.escape(str(run.get("run_id", ""))),
        "what": html.escape("reboot_method=%s, batch=%s, %d hosts" % (
            run.get("reboot_method"), run.get("batch"), len(hosts))),
        "svg": timeline_svg(hosts), "table": html.escape(table(hosts)),
        "json": html.escape(json.dumps({"run": run, "hosts": list(hosts)}, indent=1, sort_keys=True))}


def _write(path: str, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".report-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o644)
    os.rename(temp, path)


def _merged(path: str, run: Dict[str, Any], new_hosts: Sequence[Dict[str, Any]]) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The run's report so far with these hosts added or replaced: a batch that aborts the
    play still leaves a report of every host that was reached."""
    try:
        with open(path) as handle:
            old = json.load(handle)
    except (OSError, ValueError):
        old = {}
    hosts = {str(h.get("host")): h for h in old.get("hosts", [])}
    hosts.update({str(h.get("host")): h for h in new_hosts})
    return dict(old.get("run", {}), **run), list(hosts.values())


def write_report(opts: ReportOptions) -> Dict[str, Any]:
    stem = os.path.join(opts.report_dir, "liveupdate-%s" % opts.run.get("run_id", "run")) if opts.report_dir else ""
    lock = None
    if stem and not opts.check_mode:
        os.makedirs(opts.report_dir, exist_ok=True)
        lock = open(stem + ".lock", "w")  # noqa: SIM115 - held across the read-merge-write below
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        return _write_locked(opts, stem)
    finally:
        if lock is not None:
            lock.close()


def _write_locked(opts: ReportOptions, stem: str) -> Dict[str, Any]:
    run, merged = _merged(stem + ".json", opts.run, opts.hosts) if stem else (dict(opts.run), list(opts.hosts))
    hosts = sorted(merged, key=lambda h: (int(h.get("batch") or 0), str(h.get("host"))))
    run = dict(run, updated=jr.now())
    summary = table(hosts)
    result: Dict[str, Any] = {"changed": False, "table": summary, "table_lines": summary.splitlines(),
                              "failed_hosts": [h["host"] for h in hosts if h.get("status") == "failed"],
                              "vms_down": [("%s/%s" % (h["host"], vm)) for h in hosts for vm in h.get("vms_down", [])]}
    if opts.check_mode or not stem:
        return result
    _write(stem + ".json", json.dumps({"run": run, "hosts": hosts}, indent=1, sort_keys=True))
    _write(stem + ".html", html_page(run, hosts))
    for suffix in (".json", ".html"):
        latest = os.path.join(opts.report_dir, "latest" + suffix)
        _link(stem + suffix, latest)
    result.update(json_path=stem + ".json", html_path=stem + ".html")
    return result


def _link(target: str, link: str) -> None:
    temp = link + ".tmp"
    if os.path.lexists(temp):
        os.unlink(temp)
    os.symlink(os.path.basename(target), temp)
    os.rename(temp, link)
