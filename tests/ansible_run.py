"""Ansible runs against localhost or a lab inventory, and what each task did: the helpers tests import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "tests" / "integration" / "inventory.yml"
BIN = Path(sys.executable).parent


def install_collection(base: Path) -> Path:
    """Build the artifact into base and install it into base/collections, as a user does; returns that path."""
    collections = base / "collections"
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(base)],
                   cwd=ROOT, check=True, capture_output=True)
    # --force and a cwd outside the repository: its ansible.cfg would say the collection is installed already
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--force", "--collections-path",
                    str(collections), *map(str, base.glob("liveupdate-cpr-*.tar.gz"))], check=True,
                   capture_output=True, cwd=base)
    assert (collections / "ansible_collections" / "liveupdate" / "cpr" / "MANIFEST.json").is_file()
    return collections


def _env(result_log: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "callback_plugins"), ANSIBLE_CALLBACKS_ENABLED="result_log",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", RESULT_LOG=str(result_log),
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               PATH="%s:%s" % (BIN, env.get("PATH", "")))
    return env


class AnsibleRun:
    """What one ansible or ansible-playbook run did, task by task."""

    def __init__(self, command: List[str], timeout: float) -> None:
        with tempfile.NamedTemporaryFile(prefix="ansible-results-", suffix=".jsonl") as log:
            process = subprocess.run(command, cwd=ROOT, env=_env(Path(log.name)), capture_output=True, text=True,
                                     timeout=timeout, check=False)
            self.entries = [json.loads(line) for line in Path(log.name).read_text().splitlines() if line]
        self.stdout = process.stdout
        self.stderr = process.stderr
        self.rc = process.returncode
        if not self.entries:
            raise AssertionError("ansible ran no task:\n%s\n%s" % (process.stdout, process.stderr))

    def results(self) -> List[Dict[str, Any]]:
        """Each task's result, in order."""
        return [entry["result"] for entry in self.entries]

    @property
    def result(self) -> Dict[str, Any]:
        return self.results()[-1]


def run_module(module: str, args: Dict[str, Any], check: bool = False, verbose: bool = False,
               extra_vars: Optional[Dict[str, Any]] = None) -> AnsibleRun:
    """``ansible localhost -m liveupdate.cpr.MODULE -a JSON``: the ad-hoc path an operator uses."""
    command = [str(BIN / "ansible"), "localhost", "-i", str(INVENTORY), "-m", "liveupdate.cpr." + module,
               "-a", json.dumps(args)]
    if extra_vars:
        command += ["-e", json.dumps(extra_vars)]
    if check:
        command.append("--check")
    if verbose:
        command.append("-vvv")
    return AnsibleRun(command, 600)


def run_playbook(playbook: Path, extra_vars: Optional[Dict[str, Any]] = None, check: bool = False,
                 inventory: Path = INVENTORY) -> AnsibleRun:
    command = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), "-e", json.dumps(extra_vars or {})]
    if check:
        command.append("--check")
    return AnsibleRun(command, 900)
