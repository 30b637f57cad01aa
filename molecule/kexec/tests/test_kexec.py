"""Verify the molecule `kexec` scenario from outside the nested guests: testinfra over SSH into each lab host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

LAB = os.environ.get("LIVEUPDATE_HOST_LAB", "/tmp/liveupdate-molecule-kexec")
sys.path.insert(0, os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."))

from lab.host.evidence import blackout_split, guest_verdict, stall_agreement  # noqa: E402
from lab.host.fleet import INSIDE_DIR  # noqa: E402

INSIDE = INSIDE_DIR + "/inside.py"
UNIT = "liveupdate-cpr-restore.service"
# converge: hv1's VMs are restored at boot, hv2's by Ansible (liveupdate_restore_at_boot=false); hv3's, in the report
# of its fallback's rerun (reports-fallback), by Ansible
RESTORED_BY = {"hv1": "boot unit", "hv2": "ansible", "hv3": "ansible"}


def lab_host(host):
    with open(os.path.join(LAB, "lab.json")) as handle:
        lab = json.load(handle)
    name = host.backend.get_hostname()
    entry = next(entry for entry in lab["hosts"] if entry["name"] == name)
    return lab, entry


def newer_release(lab):
    return lab["image"]["newer_kernel_package"][len("linux-image-"):]


def report_entry(host, directory="reports"):
    with open(os.path.join(LAB, directory, "latest.json")) as handle:
        report = json.load(handle)
    return next(entry for entry in report["hosts"] if entry["host"] == host.backend.get_hostname())


def guests_now(host):
    return {guest["vm"]: guest for guest in json.loads(host.check_output("python3 %s probe", INSIDE))}


def expected_vms(entry):
    # hv3's tmpfs VM was refused and stopped by fallback.yml; every other VM must have come through
    return [vm for vm in entry["vms"] if not vm["vm"].endswith("hv3-vm2")]


def test_new_boot_on_the_expected_kernel(host):
    lab, entry = lab_host(host)
    assert host.file("/proc/sys/kernel/random/boot_id").content_string.strip() != entry["boot_id"]
    # hv3's too: its fault chain (faults.yml) jumped into the kernel that its fallback's firmware reboot did not boot
    assert host.check_output("uname -r") == newer_release(lab)


def test_every_nested_vm_resumed_with_its_ram_intact(host):
    entry = lab_host(host)[1]
    now = guests_now(host)
    for vm in expected_vms(entry):
        verdict = guest_verdict(vm, now.get(vm["vm"]))
        assert verdict["ok"], "%s: %s" % (vm["vm"], verdict["why"])


def test_restored_vms_run_in_transient_units_without_restart(host):
    entry = lab_host(host)[1]
    units = host.check_output("systemctl list-units --plain --no-legend --type=service 'liveupdate-cpr-*'")
    for vm in expected_vms(entry):
        found = [line.split()[0] for line in units.splitlines() if vm["vm"] in line]
        assert found, "no liveupdate-cpr-* unit runs %s:\n%s" % (vm["vm"], units)
        assert host.check_output("systemctl show -P Restart %s", found[0]) == "no"


def test_report_blackout_matches_what_the_guest_saw_and_the_host_bounds(host):
    """The report's blackout (QEMU's STOP to RESUME) against two observations from outside the report.

    The guest's own: its longest stall, the most seconds its CMOS clock (the host's wall clock) moved between
    two of its passes, read from its RAM. It must match the blackout in length and in when it ended.
    The host's: it was down from the kexec jump until SSH answered, so no blackout can be shorter."""
    entry = lab_host(host)[1]
    report = report_entry(host, "reports-fallback" if entry["name"] == "hv3" else "reports")
    assert report["status"] == "updated" and not report["vms_down"], report
    reported = {vm["vm"]: vm for vm in report["vms"]}
    rows = {row["vm"]: row for row in blackout_split(report)}
    now = guests_now(host)
    for vm in expected_vms(entry):
        if entry["name"] == "hv3":
            # the guest keeps only its longest stall, which may be that of hv3's later fault chain (faults.yml)
            assert now[vm["vm"]]["longest_stall"] >= float(reported[vm["vm"]]["blackout_seconds"]) - 3, vm["vm"]
            continue
        agreement = stall_agreement(reported[vm["vm"]], now[vm["vm"]])
        assert agreement["ok"], "%s: %s" % (vm["vm"], agreement["why"])
        row = rows[vm["vm"]]
        if row["reboot"] is not None:
            assert float(row["blackout"]) >= float(row["reboot"]), (vm["vm"], row)


def test_report_names_the_kernels_and_the_reboot(host):
    lab, entry = lab_host(host)
    if entry["name"] == "hv3":
        return  # fallback.yml and faults.yml check the output of its runs, each of which a fault ended
    report = report_entry(host)
    assert report["action"] == "cycle" and report["reboot_method"] == "kexec"
    assert report["kernel_before"] == entry["kernel"] and report["kernel_after"] == newer_release(lab)
    reboot = report["reboot"]
    assert float(reboot["jumped_at"]) < float(reboot["booted_at"]) < float(reboot["answered_at"])
    for row in blackout_split(report):
        assert row["state_size"] < 1 << 20, "x-ignore-shared: device state only, not RAM"
        assert row["blackout"] > row["reboot"] > 0


def upstream(version):
    """1:11.1.3+ds-2~bpo13+1 -> 11.1.3, as QEMU reports itself over QMP."""
    return version.split(":", 1)[-1].split("+", 1)[0].split("-", 1)[0]


def test_qemu_was_upgraded_by_apt_and_each_vm_restored_by_the_new_qemu_on_its_machine_type(host):
    lab, entry = lab_host(host)
    if entry["name"] == "hv3":
        return  # its run restores on the same QEMU; the QEMU upgrade is hv1's and hv2's
    old, new = upstream(lab["image"]["qemu_version"]), upstream(lab["image"]["newer_qemu_version"])
    assert old != new
    assert host.package("qemu-system-x86").version == lab["image"]["newer_qemu_version"]
    report = report_entry(host)
    assert set(report["qemu_before"]) == {old} and set(report["qemu_after"]) == {new}, report
    reported = {vm["vm"]: vm for vm in report["vms"]}
    for vm in expected_vms(entry):
        row = reported[vm["vm"]]
        assert (row["qemu_version"], row["restored_qemu_version"]) == (old, new), row
        # the QEMU that runs it now was started with the machine type the old one ran, pinned
        argv = host.check_output("pgrep -a -f '[g]uest=%s,'", vm["vm"])  # [g]: not the shell running pgrep
        assert "-machine pc-q35-%s" % ".".join(old.split(".")[:2]) in argv, argv


def test_the_qemu_only_path_moved_hv3s_vms_to_the_new_qemu_without_a_reboot(host):
    lab, entry = lab_host(host)
    if entry["name"] != "hv3":
        return
    old, new = upstream(lab["image"]["qemu_version"]), upstream(lab["image"]["newer_qemu_version"])
    report = report_entry(host, "reports-relaunch")
    assert report["action"] == "relaunch" and report["status"] == "updated", report
    assert report["kernel_before"] == report["kernel_after"] == entry["kernel"], "no reboot"
    relaunched = {vm["vm"]: vm for vm in report["vms"]}
    assert sorted(relaunched) == sorted(vm["vm"] for vm in entry["vms"]), relaunched
    for row in relaunched.values():
        assert row["action"] == "relaunched" and (row["previous_qemu_version"], row["qemu_version"]) == (old, new), row
        # a relaunch, not a reboot (the kernel is unchanged, above); how fast it is belongs to make bench
        assert row["blackout_seconds"] < 60, row


def unit_log(host):
    return host.check_output("journalctl -b --no-pager -o cat -u %s", UNIT)


def monotonic_start(host, unit):
    return int(host.check_output("systemctl show --property=ExecMainStartTimestampMonotonic --value %s", unit))


def test_the_restore_unit_is_ordered_on_nothing_that_waits_for_sshd_or_the_network(host):
    shown = host.check_output("systemctl show --property=After,Before,Requires,Wants,BindsTo,Requisite %s", UNIT)
    for late in ("ssh.service", "network-online.target", "network.target", "multi-user.target"):
        assert late not in shown, shown
    assert host.check_output("systemctl is-enabled %s", UNIT) == "enabled"


def test_each_vm_was_restored_by_the_path_its_host_was_given(host):
    entry = lab_host(host)[1]
    report = report_entry(host, "reports-fallback" if entry["name"] == "hv3" else "reports")
    restored_by = {vm["vm"]: vm.get("restored_by") for vm in report["vms"]}
    for vm in expected_vms(entry):
        assert restored_by.get(vm["vm"]) == RESTORED_BY[entry["name"]], (vm["vm"], restored_by)


def test_at_boot_the_unit_started_before_sshd_and_resumed_every_vm(host):
    entry = lab_host(host)[1]
    if entry["name"] != "hv1":
        return
    # systemd's own timestamps, microseconds since this boot: one clock
    assert 0 < monotonic_start(host, UNIT) < monotonic_start(host, "ssh.service")
    log = unit_log(host)
    for vm in expected_vms(entry):
        assert "%s: resumed at" % vm["vm"] in log, log
    timeline = report_entry(host)["reboot"]
    # all on the new boot's clock: the kernel, then systemd (the initramfs done), then the unit
    assert float(timeline["booted_at"]) < float(timeline["userspace_started_at"]) < float(timeline["unit_started_at"]) \
        < float(timeline["answered_at"])


def test_the_unit_restored_nothing_where_it_was_not_to(host):
    # hv3's cold boot (no token: the unit waits) is checked in fallback.yml, its unit failure in faults.yml
    entry = lab_host(host)[1]
    if entry["name"] == "hv2":
        assert "restoring nothing: the rollout turned restore at boot off" in unit_log(host)


def _lab_fleet(action, *words, check=True, timeout=120):
    argv = [sys.executable, "-m", "lab.host.fleet", action, "--dir", LAB] + list(words)
    return subprocess.run(argv, cwd=os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), capture_output=True, text=True,
                          timeout=timeout, check=check)


def _lab_ssh(name, *command, check=True):
    return _lab_fleet("ssh", name, "--", *command, check=check)


def _ansible(*argv):
    project = os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")
    return subprocess.run(list(argv), cwd=project, capture_output=True, text=True, timeout=900, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(project, "ansible.cfg")))


def test_zz_after_a_power_cycle_of_a_memmap_host_a_rerun_resumes_nothing(host):
    """Last, since it leaves hv2's VMs saved. The plug pulled (its QEMU killed: no sync, no shutdown, and its RAM, the
    memmap= pmem among it, gone with the process), then a cold boot as a BMC's power-on: the new boot carries no
    armed token, so no memmap= RAM may be resumed."""
    entry = lab_host(host)[1]
    if entry["name"] != "hv2":
        return
    python = "ansible_python_interpreter=/opt/liveupdate-cpr/venv/bin/python"
    saved = _ansible(shutil.which("ansible") or "ansible", "-i", LAB + "/inventory.yml", "hv2", "-e", python,
                     "-m", "liveupdate.cpr.vm_save", "-a", json.dumps({"qmp_dir": "/run/liveupdate-lab/qmp"}))
    assert saved.returncode == 0, saved.stdout + saved.stderr
    boot_before = host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    for action in ("power-off", "power-on"):  # power-on returns once a real SSH command answers
        _lab_fleet(action, "hv2", timeout=600)
    assert _lab_ssh("hv2", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip() not in ("", boot_before)

    rerun = _ansible(shutil.which("ansible-playbook") or "ansible-playbook", "-i", LAB + "/inventory.yml",
                     "playbooks/kernel_live_update.yml", "-e", "liveupdate_hosts=hv2", "-e",
                     "liveupdate_update_kernel=false", "-e", "liveupdate_report_dir=%s/reports-crash" % LAB)

    assert rerun.returncode != 0
    for vm in entry["vms"]:
        assert vm["vm"] in rerun.stdout
    assert "this boot is not the planned kexec" in rerun.stdout, rerun.stdout[-3000:]
    journal = json.loads(_lab_ssh("hv2", "python3", "-c", "import glob, json; print(json.dumps({p: json.load(open(p))"
                                  "['phase'] for p in glob.glob('/var/lib/liveupdate-cpr/*.json')}))").stdout)
    assert sorted(journal.values()) == ["saved"] * len(entry["vms"]), journal
    assert "carries no liveupdate_cpr.restore token" in _lab_ssh(
        "hv2", "journalctl", "-b", "--no-pager", "-o", "cat", "-u", UNIT).stdout
    # [q]: the pattern must not match the shell that runs pgrep
    running = _lab_ssh("hv2", "sh", "-c", "pgrep -c -f '[q]emu-system-x86_64 -name guest=hv2-vm' || true").stdout.strip()
    assert running == "0", "a guest was started from RAM that may be lost"
