"""Fixtures of the engine's unit tests."""

from __future__ import annotations

import pytest
from engine_fakes import FakeAgent


@pytest.fixture
def agent_factory(tmp_path):
    made = []

    def make(**kwargs):
        made.append(FakeAgent(tmp_path, name="qga%d.sock" % len(made), **kwargs))
        return made[-1]
    yield make
    for agent in made:
        agent.close()
