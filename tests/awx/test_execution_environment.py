"""execution-environment.yml gives a valid ansible-builder context, and its stages would find what they need.

No container engine runs here, so the test stops at the build context, then rehearses the galaxy and
builder stages with the same commands the Containerfile runs: install the requirements from _build, then
introspect the installed collections for their Python and system requirements.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent


def run(*argv: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, "%s\n%s\n%s" % (argv, done.stdout, done.stderr)
    return done.stdout


def test_builder_context_installs_the_collection_with_its_requirements(tmp_path):
    definition = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    artifact = "liveupdate-cpr-%s.tar.gz" % version
    assert definition["version"] == 3
    assert definition["additional_build_files"] == [{"src": "build/" + artifact, "dest": "collections"}], \
        "the EE must carry this version's artifact"

    run(str(BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path", "build")
    context = tmp_path / "context"
    run(str(BIN / "ansible-builder"), "create", "--file", "execution-environment.yml", "--context", str(context),
        "--output-filename", "Containerfile")

    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="%s"' % definition["images"]["base_image"]["name"] in containerfile
    assert "FROM $EE_BASE_IMAGE AS base" in containerfile
    assert "ansible-core==2.19.14 ansible-runner==2.4.3" in containerfile
    build = context / "_build"
    assert (build / "collections" / artifact).is_file()
    assert yaml.safe_load((build / "requirements.yml").read_text()) == {
        "collections": [{"name": "collections/" + artifact, "type": "file"}]}

    # the galaxy stage: WORKDIR /build, then ansible-galaxy collection install -r requirements.yml
    installed = tmp_path / "usr-share-ansible-collections"
    run(str(BIN / "ansible-galaxy"), "collection", "install", "-r", "requirements.yml", "--collections-path", str(installed),
        cwd=build)
    collection = installed / "ansible_collections" / "liveupdate" / "cpr"
    assert (collection / "meta" / "execution-environment.yml").is_file()
    assert (collection / "playbooks" / "kernel-live-update.yml").is_file()
    assert not (collection / "tests").exists() and not (collection / "lab").exists(), "build_ignore keeps them out"
    assert not (collection / "execution-environment.yml").exists()

    # the builder stage: introspect the installed collections through meta/execution-environment.yml
    pip, bindep = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    run(sys.executable, str(build / "scripts" / "introspect.py"), "introspect", str(installed),
        "--write-pip", str(pip), "--write-bindep", str(bindep))
    python_requirements = pip.read_text()
    for requirement in (ROOT / "requirements.txt").read_text().splitlines():
        if requirement and not requirement.startswith("#"):
            assert requirement in python_requirements
    assert "openssh-client [platform:dpkg]" in bindep.read_text()
