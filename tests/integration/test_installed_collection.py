"""The collection as a user gets it: the built artifact, installed, and every playbook run by its FQCN.

Nothing here can reach the working tree: the cwd is a temporary directory, the config names no collections path
(the repository's ansible.cfg points at .dev-collections, a link back to the tree), and ANSIBLE_COLLECTIONS_PATH
holds only the installed artifact. So liveupdate.cpr.* resolves as it does after ansible-galaxy collection install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple

import pytest
from ansible_run import BIN, ROOT, install_collection

# Every playbook by the name a user types after ansible-galaxy collection install; subdirectories are dotted.
FQCNS = ["kernel_live_update", "prepare_hosts", "awx.configure", "awx.report", "awx.keep_artifacts"]
# Import shims kept for the README's hyphenated commands: a hyphen is not valid in an FQCN.
SHIMS = {"kernel-live-update": "kernel_live_update", "prepare-hosts": "prepare_hosts"}


class Installed(NamedTuple):
    base: Path
    collections: Path
    collection: Path
    env: Dict[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("installed")
    collections = install_collection(base)
    config = base / "ansible.cfg"
    config.write_text("[defaults]\ninterpreter_python = auto_silent\nretry_files_enabled = false\n")
    # nothing of the caller's Ansible settings (ANSIBLE_CONFIG, a collections path) may leak in
    env = {name: value for name, value in os.environ.items() if not name.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(config), ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1",
               PATH="%s:%s" % (BIN, env.get("PATH", "")))
    yield Installed(base, collections, collections / "ansible_collections" / "liveupdate" / "cpr", env)


def playbook(installed: Installed, fqcn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ansible-playbook"), "liveupdate.cpr." + fqcn, *args], cwd=installed.base,
                          env=installed.env, capture_output=True, text=True, timeout=300, check=False)


def tree(path: Path) -> List[str]:
    return sorted(str(entry.relative_to(path)) for entry in path.rglob("*"))


def test_the_names_cover_every_playbook():
    found = {str(path.relative_to(ROOT / "playbooks").with_suffix("")).replace("/", ".")
             for path in (ROOT / "playbooks").rglob("*.yml") if "vars" not in path.parts}
    assert found == set(FQCNS) | set(SHIMS)
    assert all(name.replace(".", "").replace("_", "").isalnum() for name in FQCNS)


def test_the_artifact_holds_what_the_playbooks_need_and_no_development_files(installed):
    collection = installed.collection
    for name in [*FQCNS, *SHIMS]:
        assert (collection / "playbooks" / (name.replace(".", "/") + ".yml")).is_file(), name
    for needed in ["playbooks/vars/rollout.yml", "playbooks/awx/surveys/rollout.json", "meta/runtime.yml",
                   "requirements.txt", "bindep.txt", "meta/execution-environment.yml"]:
        assert (collection / needed).is_file(), needed
    for kind in ["roles", "plugins/modules", "plugins/module_utils", "plugins/filter", "plugins/action"]:
        shipped = tree(collection / kind)
        assert shipped and shipped == [name for name in tree(ROOT / kind) if "__pycache__" not in name], kind
    for left_out in ["tests", "lab", "molecule", "bench", "docs", ".venv", ".venv-oldest", ".dev-collections", "build",
                     "reports", "Makefile", "ansible.cfg", "tools", "requirements-dev.txt", "requirements-oldest.txt"]:
        assert not (collection / left_out).exists(), "build_ignore leaves out %s" % left_out


@pytest.mark.parametrize("fqcn", FQCNS)
def test_every_playbook_resolves_by_fqcn_from_the_installed_collection(installed, fqcn):
    done = playbook(installed, fqcn, "--syntax-check")
    assert done.returncode == 0, done.stdout + done.stderr
    expected = installed.collection / "playbooks" / (fqcn.replace(".", "/") + ".yml")
    assert "playbook: %s" % expected in done.stdout, done.stdout


def test_a_shim_name_is_not_an_fqcn(installed):
    done = playbook(installed, "kernel-live-update", "--syntax-check")
    assert done.returncode != 0 and "could not be found" in done.stdout + done.stderr


def test_rollout_by_fqcn_plans_and_runs_and_writes_nothing_into_the_collection(installed, tmp_path):
    """A hypervisor with no VMs (this machine, local connection): the plan, then a real run that has nothing to do."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"hypervisors": {"hosts": {"hv1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "liveupdate_venv": sys.prefix,  # has qemu.qmp: the host counts as prepared
        "liveupdate_qmp_dir": str(tmp_path / "qmp"), "liveupdate_state_dir": str(tmp_path / "state"),
        "liveupdate_reboot_method": "none", "liveupdate_update_kernel": False, "liveupdate_update_qemu": False}}}}))
    (tmp_path / "qmp").mkdir()
    reports = installed.base / "reports"  # the default: reports/ in the directory ansible-playbook runs in
    shutil.rmtree(reports, ignore_errors=True)
    before = tree(installed.collection)

    plan = playbook(installed, "kernel_live_update", "-i", str(inventory), "--check")
    assert plan.returncode == 0, plan.stdout[-4000:] + plan.stderr
    assert "batch 1  hv1  none  reboot none  kernel %s  VMs -" % os.uname().release in plan.stdout, plan.stdout[-4000:]
    assert not reports.exists(), "check mode writes no report"

    run = playbook(installed, "kernel_live_update", "-i", str(inventory))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr
    report = json.loads((reports / "latest.json").read_text())
    assert [(host["host"], host["action"]) for host in report["hosts"]] == [("hv1", "none")]
    assert tree(installed.collection) == before, "nothing, reports included, is written into the installed collection"
