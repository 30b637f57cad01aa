"""Nothing waits for a keyboard: an AWX job has none, and would hang until its timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
FILES = sorted(p for d in ("playbooks", "roles", "molecule") for p in (ROOT / d).rglob("*.yml"))


def walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_the_scan_sees_the_playbooks():
    assert ROOT / "playbooks" / "kernel-live-update.yml" in FILES and ROOT / "playbooks" / "awx" / "configure.yml" in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_prompt_and_no_open_ended_pause(path):
    for node in walk(yaml.safe_load(path.read_text())):
        assert "vars_prompt" not in node, "%s prompts" % path
        for key in ("pause", "ansible.builtin.pause", "ansible.legacy.pause"):
            if key in node:
                args = node[key] if isinstance(node[key], dict) else {}
                assert "seconds" in args or "minutes" in args, "%s: %s waits for Enter" % (path, node.get("name"))
