"""The AWX survey files: AWX would accept them, and they agree with what the playbook and role accept.

AWX's rules are restated in awx_rules.py, from ansible/awx awx/api/views/__init__.py
(JobTemplateSurveySpec._validate_spec_data) and awx/main/models/mixins.py (_survey_element_validation).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from awx_rules import answer_errors, launch_extra_vars, spec_errors

from ansible_collections.liveupdate.cpr.plugins.filter.serial_steps import serial_steps

ROOT = Path(__file__).resolve().parent.parent.parent
AWX = ROOT / "playbooks" / "awx"
SURVEYS = sorted((AWX / "surveys").glob("*.json"))
ROLE_OPTIONS: Dict[str, Any] = yaml.safe_load(
    (ROOT / "roles" / "liveupdate" / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
# Play keywords cannot read inventory vars, so these four are the playbook's own, documented in vars/rollout.yml
PLAYBOOK_VARS = dict(re.findall(r"^# (liveupdate_\w+): (\S+)", (ROOT / "playbooks" / "vars" / "rollout.yml").read_text(), re.M))
# A survey has no boolean question; the role reads these answers with `| bool`
BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False}
# the question types that can carry each arg-spec type
COMPATIBLE = {"str": {"text", "textarea", "password", "multiplechoice"}, "int": {"integer"}, "float": {"float", "integer"},
              "bool": {"multiplechoice"}, "list": {"multiselect"},
              "raw": {"text", "textarea"}}  # the role splits a string answer into an argv


def load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def test_every_template_has_its_survey_file():
    referenced = set(re.findall(r"surveys/([\w.-]+\.json)|survey: ([\w.-]+\.json)", (AWX / "configure.yml").read_text()))
    names = {name for pair in referenced for name in pair if name}
    assert names == {path.name for path in SURVEYS} == {"preflight.json", "rollout.json", "resume.json"}


@pytest.mark.parametrize("path", SURVEYS, ids=lambda p: p.name)
def test_awx_accepts_the_survey(path):
    assert spec_errors(load(path)) == []


@pytest.mark.parametrize("path", SURVEYS, ids=lambda p: p.name)
def test_awx_keeps_every_default(path):
    """AWX drops a default that fails its own answer validation, and the job would run without the variable."""
    for item in load(path)["spec"]:
        assert "default" in item, item["variable"]
        assert answer_errors(item, {item["variable"]: item["default"]}) == [], item["variable"]


@pytest.mark.parametrize("path", SURVEYS, ids=lambda p: p.name)
def test_survey_agrees_with_the_role_and_the_playbook(path):
    for item in load(path)["spec"]:
        variable, qtype = item["variable"], item["type"]
        assert variable in ROLE_OPTIONS or variable in PLAYBOOK_VARS, "%s is not a variable of the rollout" % variable
        if variable not in ROLE_OPTIONS:
            continue
        option = ROLE_OPTIONS[variable]
        assert qtype in COMPATIBLE[option["type"]], "%s: a %s question for a %s" % (variable, qtype, option["type"])
        choices = item.get("choices")
        if option["type"] == "bool":
            assert set(choices) <= set(BOOL_WORDS), variable
            assert BOOL_WORDS[item["default"]] == option["default"], variable
        else:
            if "choices" in option:
                assert sorted(choices) == sorted(option["choices"]), variable
            default = item["default"].split() if option["type"] == "raw" else item["default"]  # the role's split
            assert default == option["default"], variable


@pytest.mark.parametrize("path", SURVEYS, ids=lambda p: p.name)
def test_the_role_accepts_every_answer_a_survey_allows(path):
    """Ansible's own argument-spec validation (what include_role runs) over each default and each choice."""
    spec = load(path)
    options = {name: option for name, option in ROLE_OPTIONS.items() if name in {i["variable"] for i in spec["spec"]}}
    answers = [launch_extra_vars(spec, {})]
    for item in spec["spec"]:
        answers += [launch_extra_vars(spec, {item["variable"]: choice}) for choice in item.get("choices", [])]
    for extra_vars in answers:
        role_vars = {name: value for name, value in extra_vars.items() if name in options}
        result = ArgumentSpecValidator(options).validate(role_vars)
        assert not result.error_messages, result.error_messages
        # the playbook's own: serial_steps and max_fail_percentage
        assert serial_steps(extra_vars["liveupdate_batch"])
        assert 0 <= extra_vars["liveupdate_max_fail_percentage"] <= 100


def test_the_three_rollout_templates_ask_the_same_questions():
    questions = {path.name: {item["variable"]: item for item in load(path)["spec"]} for path in SURVEYS}
    assert questions["preflight.json"] == questions["rollout.json"], "the plan must be asked what the rollout is"
    resume = dict(questions["resume.json"])
    assert resume.pop("liveupdate_break_lock")["default"] == ""
    assert resume == questions["rollout.json"]


# The restated rules must refuse what AWX refuses, or the checks above prove nothing.
GOOD = {"name": "n", "description": "d", "spec": [
    {"type": "multiplechoice", "question_name": "q", "variable": "v", "required": True, "choices": ["a", "b"], "default": "a"}]}


def broken(**change: Any) -> Dict[str, Any]:
    spec = json.loads(json.dumps(GOOD))
    spec["spec"][0].update(change)
    return spec


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "n", "spec": GOOD["spec"]}, "Field 'description' is missing"),
    ({"name": "n", "description": "d", "spec": []}, "doesn't contain any items"),
    (broken(type="boolean"), "allowed question types"),
    (broken(required="yes"), "expected to be boolean"),
    (broken(default="c"), "Default choice must be answered from the choices"),
    (broken(default="a\nb"), "can only have one default"),
    ({"name": "n", "description": "d", "spec": [{k: v for k, v in GOOD["spec"][0].items() if k != "choices"}]},
     "must specify choices"),
    (broken(type="integer", default="1"), "expected to be integer"),
    (broken(type="text", default="x", min="1"), "limit in survey question 0 expected to be integer"),
    (broken(type="password", default="$encrypted$"), "reserved keyword"),
    ({"name": "n", "description": "d", "spec": GOOD["spec"] * 2}, "duplicated"),
])
def test_the_restated_rules_refuse_what_awx_refuses(spec, message):
    assert any(message in error for error in spec_errors(spec)), spec_errors(spec)


@pytest.mark.parametrize(("item", "value", "message"), [
    ({"type": "integer", "min": 0, "max": 100}, "5", "expected to be an integer"),
    ({"type": "integer", "min": 0, "max": 100}, 101, "too large"),
    ({"type": "text", "min": 1, "max": 3}, "", "too small"),
    ({"type": "text", "min": 1, "max": 3}, 1, "expected to be a string"),
    ({"type": "multiplechoice", "choices": ["a"]}, "b", "expected to be one of"),
])
def test_the_restated_rules_refuse_answers_awx_refuses(item, value, message):
    item = dict(item, variable="v", required=True)
    assert any(message in error for error in answer_errors(item, {"v": value}))
