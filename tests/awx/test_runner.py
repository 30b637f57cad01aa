"""The job templates run the way AWX runs them: ansible-runner, a private data dir, survey-shaped extra vars.

AWX copies the project into PRIVATE_DATA_DIR/project, runs ansible-playbook there through ansible-runner, and finds
collections through ANSIBLE_COLLECTIONS_PATH: PRIVATE_DATA_DIR/requirements_collections (what a project's
collections/requirements.yml installs), then the execution environment's /usr/share/ansible/collections. Here the
project copy leaves out .dev-collections, and the EE's collections dir is the built artifact installed, so the
rollout can only find liveupdate.cpr the way an EE gives it. The hosts are the local fleet lab (real QEMU, TCG).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import ansible_runner
import pytest
from ansible_run import install_collection
from awx_rules import launch_extra_vars

from lab import local_fleet as fleet

ROOT = Path(__file__).resolve().parent.parent.parent
PLAYBOOK = "playbooks/kernel-live-update.yml"
SURVEYS = ROOT / "playbooks" / "awx" / "surveys"
# What an operator answers for the lab: it updates QEMU only (its "hosts" cannot kexec)
LAB_ANSWERS = {"liveupdate_reboot_method": "none", "liveupdate_update_qemu": "true", "liveupdate_batch": "1,50%"}


def _project_copy(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if name.startswith(".dev-collections/") or not source.exists():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name, follow_symlinks=False)


class AwxLike:
    """A lab fleet, an EE-like collections dir, and one private data dir per job."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.lab = base / "lab"
        self.layout = fleet.create(self.lab, hosts=2, vms=1)
        self.reports = self.lab / "reports"
        self.ee_collections = install_collection(base)

    def launch(self, ident: str, playbook: str, extravars: Dict[str, Any], check: bool = False,
               limit: Optional[str] = None) -> Any:
        private = self.base / ident
        _project_copy(private / "project")
        # the template's own extra_vars (configure.yml), then the survey's answers, as AWX merges them
        extravars = dict({"liveupdate_report_dir": str(self.reports), "awx_job_id": 1, "awx_job_template_name": ident},
                         **extravars)
        return ansible_runner.run(
            private_data_dir=str(private), project_dir=str(private / "project"), playbook=playbook,
            inventory=str(self.lab / "inventory.yml"), extravars=extravars, limit=limit, ident=ident,
            cmdline="--check" if check else None,  # what AWX adds for job_type: check
            envvars={"ANSIBLE_COLLECTIONS_PATH": "%s:%s" % (private / "requirements_collections", self.ee_collections),
                     "ANSIBLE_NOCOLOR": "1"},
            quiet=True, timeout=1800)

    def probe(self) -> Dict[str, Dict[str, Any]]:
        return {vm["vm"]: vm for vm in fleet.probe_all(self.lab)}


@pytest.fixture(scope="module")
def awx(disk) -> Iterator[AwxLike]:
    base = Path(tempfile.mkdtemp(prefix="lu-awx-", dir="/tmp"))
    try:
        yield AwxLike(base)
    finally:
        fleet.destroy(base / "lab")
        shutil.rmtree(base, ignore_errors=True)


def survey(name: str, answers: Dict[str, Any]) -> Dict[str, Any]:
    return launch_extra_vars(json.loads((SURVEYS / name).read_text()), answers)


def artifacts(run: Any) -> Path:
    directory = Path(run.config.artifact_dir)
    assert (directory / "stdout").read_text(), "stdout is kept"
    assert list((directory / "job_events").glob("*.json")), "job events are kept"
    return directory


def stats_event(run: Any) -> Dict[str, Any]:
    return next(event for event in run.events if event["event"] == "playbook_on_stats")["event_data"]


def assert_successful(run: Any) -> None:
    assert (run.status, run.rc) == ("successful", 0), run.stdout.read()[-6000:]


def test_prepare_template_readies_the_hosts(awx):
    assert_successful(awx.launch("prepare", "playbooks/prepare-hosts.yml", {}, limit="hypervisors"))


def test_preflight_template_shows_the_plan_and_changes_nothing(awx):
    before = awx.probe()
    run = awx.launch("preflight", PLAYBOOK, survey("preflight.json", LAB_ANSWERS), check=True, limit="hypervisors")
    assert_successful(run)
    stdout = (artifacts(run) / "stdout").read_text()
    assert "batch 1  hv1  relaunch" in stdout and "batch 2  hv2  relaunch" in stdout
    after = awx.probe()
    for name, vm in before.items():
        assert (after[name]["pid"], after[name]["exe_sha256"]) == (vm["pid"], vm["exe_sha256"]), name
        assert after[name]["now"]["status"] == "running"
    assert not list(awx.lab.glob("hv*/state/*")), "no journal, state file or lock"
    assert not awx.reports.exists(), "check mode writes no report"
    assert stats_event(run)["artifact_data"] == {}, "the summary is published only by a real run"


def test_rollout_template_updates_every_host_and_publishes_its_summary(awx):
    before = awx.probe()
    # a limit that names only hypervisors, as an operator types it into the prompt
    run = awx.launch("rollout", PLAYBOOK, survey("rollout.json", LAB_ANSWERS), limit="hv1,hv2")
    assert_successful(run)
    artifacts(run)
    published = stats_event(run)["artifact_data"]
    assert published["liveupdate_failed_hosts"] == []
    report = json.loads(Path(published["liveupdate_report_json"]).read_text())
    assert report["run"]["run_id"] == published["liveupdate_run_id"]
    assert {host["host"]: host["status"] for host in report["hosts"]} == {"hv1": "updated", "hv2": "updated"}
    assert [host["batch"] for host in sorted(report["hosts"], key=lambda h: h["host"])] == [1, 2], "batches 1,50%"
    after = awx.probe()
    for name, vm in before.items():
        assert after[name]["now"]["nonce"] == vm["nonce"], "%s resumed, not rebooted" % name
        assert after[name]["now"]["pattern_ok"], name
        assert after[name]["exe_sha256"] != vm["exe_sha256"], "%s runs the new QEMU build" % name

    # the workflow's next node gets the published values as extra vars
    report_job = awx.launch("report", "playbooks/awx/report.yml", dict(published))
    assert_successful(report_job)
    summary = stats_event(report_job)["artifact_data"]["liveupdate_summary"]
    assert any(line.startswith("hv1") and "updated" in line for line in summary)

    # Resume / restore on a finished host: it resumes nothing and changes nothing
    resumed = awx.launch("resume", PLAYBOOK, survey("resume.json", LAB_ANSWERS), limit="hv2")
    assert_successful(resumed)
    assert not any(resumed.stats.get("changed", {}).values()), "a finished host changes nothing: %r" % resumed.stats
    assert awx.probe()["hv2-vm1"]["pid"] == after["hv2-vm1"]["pid"]
