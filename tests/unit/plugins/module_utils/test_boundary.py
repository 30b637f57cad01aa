"""The module boundary: every module param reaches the engine's options, or the module fails loudly."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Dict

import pytest

from ansible_collections.liveupdate.cpr.plugins import action, modules
from ansible_collections.liveupdate.cpr.plugins.module_utils import boundary
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError, carrying

# a module file beside an action plugin of its name only documents it: the action plugin takes the arguments
ACTIONS = {info.name for info in pkgutil.iter_modules(action.__path__)}
MODULES = sorted(info.name for info in pkgutil.iter_modules(modules.__path__) if info.name not in ACTIONS)


class Failed(Exception):
    pass


class FakeModule:
    """The part of AnsibleModule that boundary.run uses."""

    def __init__(self, params: Dict[str, Any]) -> None:
        self.params = params
        self.check_mode = False
        self.no_log_values: set = set()
        self.exited: Dict[str, Any] = {}

    def fail_json(self, **result: Any) -> None:
        raise Failed(result["msg"])

    def exit_json(self, **result: Any) -> None:
        self.exited = result

    def warn(self, _warning: str) -> None:
        pass


@dataclass
class TwoOptions:
    first: str = ""
    second: int = 0
    check_mode: bool = False


def test_params_reach_the_engine():
    module = FakeModule({"first": "a", "second": 2})
    boundary.run(module, lambda opts: {"changed": False, "got": dataclasses.asdict(opts)}, TwoOptions, needs_qmp=False)
    assert module.exited["got"] == {"first": "a", "second": 2, "check_mode": False}


def test_a_param_the_options_do_not_name_is_a_bug_not_silently_dropped():
    module = FakeModule({"first": "a", "third": "lost"})
    with pytest.raises(Failed, match="third") as failed:
        boundary.run(module, lambda _opts: pytest.fail("the engine ran without the param"), TwoOptions, needs_qmp=False)
    assert "TwoOptions" in str(failed.value)


def test_the_secrets_an_engine_returns_are_masked_and_never_returned():
    module = FakeModule({})
    boundary.run(module, lambda _opts: {"changed": False, "secrets": {"hunter2"}}, TwoOptions, needs_qmp=False)
    assert module.no_log_values == {"hunter2"}
    assert "secrets" not in module.exited


def test_the_secrets_an_error_carries_are_masked():
    def engine(_opts):
        found = set()
        with carrying(found):
            found.add("hunter2")  # found after the carrying began: still carried
            raise CprError("QEMU said: data=hunter2")
    module = FakeModule({})
    with pytest.raises(Failed):
        boundary.run(module, engine, TwoOptions, needs_qmp=False)
    assert module.no_log_values == {"hunter2"}


@pytest.mark.parametrize("name", MODULES)
def test_every_option_of_every_module_is_a_field_of_its_options(name, monkeypatch):
    module = importlib.import_module("%s.%s" % (modules.__name__, name))
    seen: Dict[str, Any] = {}

    class Recorder:
        def __init__(self, argument_spec: Dict[str, Any], **_kwargs: Any) -> None:
            seen["spec"] = argument_spec

    def run(_module: Any, _engine: Any, options: Any, **_kwargs: Any) -> None:
        seen["options"] = options

    monkeypatch.setattr(module, "AnsibleModule", Recorder)
    monkeypatch.setattr(boundary, "run", run)
    module.main()

    fields = {field.name for field in dataclasses.fields(seen["options"])}
    assert set(seen["spec"]) <= fields, "%s: %s has no field for %s" % (
        name, seen["options"].__name__, ", ".join(sorted(set(seen["spec"]) - fields)))
