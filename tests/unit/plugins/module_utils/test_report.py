"""The rollout report: one run file that every host adds itself to, a table, and HTML that escapes what hosts report."""

from __future__ import annotations

import json
import os

from ansible_collections.liveupdate.cpr.plugins.module_utils import report
from ansible_collections.liveupdate.cpr.plugins.module_utils.report import ReportOptions, write_report

RUN = {"run_id": "r42", "reboot_method": "kexec", "batch": "1"}


def host(name, batch=1, status="ok", vms=(), **fields):
    """A host report as roles/liveupdate/tasks/record.yml builds it."""
    entry = {"host": name, "batch": batch, "status": status, "kernel_before": "6.1.0", "kernel_after": "6.1.0",
             "qemu_before": [], "qemu_after": [], "phases": {}, "vms": list(vms), "vms_down": []}
    entry.update(fields)
    return entry


def vm(name, blackout=None, state_size=None, paused_at=None, resumed_at=None):
    return {"vm": name, "blackout_seconds": blackout, "state_size": state_size, "paused_at": paused_at,
            "resumed_at": resumed_at}


def test_table_shows_kernel_and_qemu_changes_blackout_and_state_size():
    hosts = [host("hv1", kernel_after="6.12.0", qemu_before=["9.1.0", "9.1.0"], qemu_after=["9.2.0", "9.2.0"],
                  vms=[vm("a", 0.1234, 300 * 1024), vm("b", 0.5, 200 * 1024)]),
             host("hv2", batch=2, status="failed", qemu_before=["9.2.0"], qemu_after=["9.2.0"])]

    lines = report.table(hosts).splitlines()

    assert lines[0].split() == ["host", "batch", "status", "kernel", "QEMU", "VMs", "max", "blackout", "state", "guest",
                                "clocks", "health"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["hv1", "1", "ok", "6.1.0", "->", "6.12.0", "9.1.0", "->", "9.2.0", "2", "0.500", "s",
                                "500", "KiB", "-", "-"]
    assert lines[3].split() == ["hv2", "2", "failed", "6.1.0", "9.2.0", "0", "-", "-", "-", "-"]
    assert lines[2].index("ok") == lines[3].index("failed") == lines[0].index("status")  # columns line up
    assert len(lines[1]) == max(len(line) for line in lines)


def test_table_of_a_host_that_reported_nothing_yet():
    assert report.table([{"host": "hv9"}]).splitlines()[2].split() == ["hv9", "-", "?", "?", "-", "0", "-", "-", "-", "-"]


def test_the_guest_clocks_column_counts_the_clocks_set_and_the_largest_offset_fixed():
    vms = [dict(vm("a", 0.1, 1024), guest_clock={"synced": True, "offset_before_seconds": -41.25}),
           dict(vm("b", 0.1, 1024), guest_clock={"synced": True, "offset_before_seconds": -0.5}),
           dict(vm("c", 0.1, 1024), guest_clock={"synced": False, "reason": "not synced: no agent"})]
    assert report.clocks(host("hv1", vms=vms)) == "2/3 set (up to 41.2 s off)"
    assert report.clocks(host("hv1", vms=vms[2:])) == "0/1 set"


def test_the_health_column_names_the_vms_and_gates_that_failed():
    passed = {"passed": True, "gates": [{"gate": "agent_ping", "passed": True}]}
    failed = {"passed": False, "gates": [{"gate": "agent_ping", "passed": True}, {"gate": "guest_command", "passed": False}]}
    vms = [dict(vm("a"), health=passed), dict(vm("b"), health=failed), vm("c")]
    assert report.health(host("hv1", vms=vms)) == "failed: b guest_command"
    assert report.health(host("hv1", vms=vms[:1])) == "1/1 passed"
    assert report.health(host("hv1", vms=vms[2:])) == "-"


def test_html_escapes_what_hosts_and_vms_report():
    evil = "<script>alert(1)</script>"
    hosts = [host(evil, vms=[vm(evil, 0.2, 1024, paused_at=100.0, resumed_at=100.2)], error=evil,
                  phases={"save": {"start": 99.0, "end": 100.1}, evil: {"start": 100.0, "end": 101.0}})]

    page = report.html_page(dict(RUN, run_id=evil), hosts)

    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert page.count("<svg") == 1
    assert 'fill="%s"' % report.PHASE_COLOURS["save"] in page
    assert "paused 0.200 s" in page


def test_timeline_of_hosts_without_any_timestamps_still_draws():
    svg = report.timeline_svg([host("hv1", vms=[vm("a")])])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "+1.0 s" in svg


def test_each_host_adds_itself_to_one_run_file_and_a_host_reported_again_replaces_itself(tmp_path):
    report_dir = str(tmp_path / "reports")

    write_report(ReportOptions(report_dir=report_dir, run=RUN, hosts=[host("hv2", batch=2, status="failed")]))
    write_report(ReportOptions(report_dir=report_dir, run=dict(RUN, extra="kept"), hosts=[host("hv1")]))
    result = write_report(ReportOptions(report_dir=report_dir, run=RUN, hosts=[host("hv2", batch=2, status="ok")]))

    with open(result["json_path"]) as handle:
        data = json.load(handle)
    assert [(h["host"], h["status"]) for h in data["hosts"]] == [("hv1", "ok"), ("hv2", "ok")]
    assert data["run"]["run_id"] == "r42"
    assert data["run"]["extra"] == "kept"
    assert data["run"]["updated"] > 0
    assert result["failed_hosts"] == []
    assert [line.split()[0] for line in result["table_lines"][2:]] == ["hv1", "hv2"]
    assert result["json_path"] == os.path.join(report_dir, "liveupdate-r42.json")


def test_latest_points_at_the_newest_run(tmp_path):
    report_dir = str(tmp_path / "reports")
    write_report(ReportOptions(report_dir=report_dir, run=dict(RUN, run_id="r1"), hosts=[host("hv1")]))
    write_report(ReportOptions(report_dir=report_dir, run=dict(RUN, run_id="r2"), hosts=[host("hv1", status="failed")]))

    assert os.readlink(os.path.join(report_dir, "latest.json")) == "liveupdate-r2.json"
    assert os.readlink(os.path.join(report_dir, "latest.html")) == "liveupdate-r2.html"
    with open(os.path.join(report_dir, "latest.json")) as handle:
        assert json.load(handle)["hosts"][0]["status"] == "failed"
    with open(os.path.join(report_dir, "liveupdate-r1.json")) as handle:
        assert json.load(handle)["hosts"][0]["status"] == "ok"  # an older run's report is kept as it was


def test_a_corrupt_run_file_is_replaced_not_fatal(tmp_path):
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    (report_dir / "liveupdate-r42.json").write_text("{half a report")
    result = write_report(ReportOptions(report_dir=str(report_dir), run=RUN, hosts=[host("hv1")]))
    with open(result["json_path"]) as handle:
        assert [h["host"] for h in json.load(handle)["hosts"]] == ["hv1"]


def test_failed_hosts_and_vms_down_are_named(tmp_path):
    result = write_report(ReportOptions(report_dir=str(tmp_path), run=RUN, hosts=[
        host("hv1", status="failed", vms_down=["web1", "db1"]), host("hv2")]))
    assert result["failed_hosts"] == ["hv1"]
    assert result["vms_down"] == ["hv1/web1", "hv1/db1"]


def test_check_mode_and_no_report_dir_write_nothing(tmp_path):
    report_dir = tmp_path / "reports"
    checked = write_report(ReportOptions(report_dir=str(report_dir), run=RUN, hosts=[host("hv1")], check_mode=True))
    assert not report_dir.exists()
    assert "json_path" not in checked
    assert checked["table_lines"][2].split()[0] == "hv1"

    bare = write_report(ReportOptions(run=RUN, hosts=[host("hv1")]))
    assert "json_path" not in bare
    assert bare["changed"] is False


def test_the_reboot_timeline_splits_the_hosts_part_and_orders_every_event_after_the_jump():
    host = {"host": "hv1", "reboot": {"jumped_at": 1000.0, "booted_at": 1003.1, "userspace_started_at": 1006.0,
                                      "unit_started_at": 1007.2, "sshd_ready_at": 1020.0, "answered_at": 1031.5},
            "vms": [{"vm": "vm1", "restored_by": "boot unit", "resumed_at": 1008.0},
                    {"vm": "vm2", "restored_by": "boot unit", "resumed_at": 1008.4}]}

    events = [(name, round(after, 1)) for name, after in report.reboot_timeline(host)]

    assert events == [("new kernel", 3.1), ("systemd start", 6.0), ("restore unit start", 7.2),
                      ("vm1 RESUME (boot unit)", 8.0), ("vm2 RESUME (boot unit)", 8.4), ("sshd ready", 20.0),
                      ("Ansible reconnected", 31.5)]
    # a host without systemd or the unit: those events are 0 there, and left out
    bare = dict(host, reboot=dict(host["reboot"], userspace_started_at=0, unit_started_at=0, sshd_ready_at=0), vms=[])
    assert [name for name, _after in report.reboot_timeline(bare)] == ["new kernel", "Ansible reconnected"]
    assert report.reboot_timeline({"host": "hv2"}) == []
