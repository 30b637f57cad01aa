"""AWX's own survey rules, restated so the survey files can be checked without an AWX.

Followed from ansible/awx:
- awx/api/views/__init__.py, JobTemplateSurveySpec._validate_spec_data: what AWX accepts when a survey
  spec is saved (POST .../survey_spec/), with SURVEY_TYPE_MAPPING from awx/main/constants.py;
- awx/main/models/mixins.py, SurveyJobTemplateMixin._survey_element_validation: what it accepts as an
  answer at launch. AWX also runs every default through it and silently drops a default that fails,
  so a bad default would launch the job without the variable at all.
The AWX messages are kept, so a failure here reads like the 400 AWX would answer.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

# awx/main/constants.py
SURVEY_TYPE_MAPPING: Dict[str, Any] = {"text": str, "textarea": str, "password": str, "multiplechoice": str,
                                       "multiselect": str, "integer": int, "float": (float, int)}


def _choices(item: Dict[str, Any]) -> List[str]:
    choices = item["choices"]
    return [choice for choice in choices.splitlines() if choice.strip()] if isinstance(choices, str) else list(choices)


def spec_errors(spec: Any) -> List[str]:
    """Why AWX would refuse to save this survey spec; empty when it would accept it."""
    errors = []
    if not isinstance(spec, dict):
        return ["survey spec is not a json object"]
    for field, expect_type, label in [("name", str, "string"), ("description", str, "string"), ("spec", list, "list of items")]:
        if field not in spec:
            errors.append("Field '%s' is missing from survey spec." % field)
        elif not isinstance(spec[field], expect_type):
            errors.append("Expected %s for field '%s', received %s type." % (label, field, type(spec[field]).__name__))
    if isinstance(spec.get("spec"), list) and not spec["spec"]:
        errors.append("'spec' doesn't contain any items.")
    if errors:
        return errors
    variables = set()
    for idx, item in enumerate(spec["spec"]):
        if not isinstance(item, dict):
            return errors + ["Survey question %d is not a json object." % idx]
        for field in ["type", "question_name", "variable", "required"]:
            if field not in item:
                return errors + ["'%s' missing from survey question %d" % (field, idx)]
            # bool is an int in Python, and AWX checks isinstance the same way
            if not isinstance(item[field], bool if field == "required" else str):
                return errors + ["'%s' in survey question %d expected to be %s." % (
                    field, idx, "boolean" if field == "required" else "string")]
        if item["variable"] in variables:
            errors.append("'variable' '%s' duplicated in survey question %d." % (item["variable"], idx))
        variables.add(item["variable"])
        qtype = item["type"]
        if qtype not in SURVEY_TYPE_MAPPING:
            errors.append("'%s' in survey question %d is not one of '%s' allowed question types." % (
                qtype, idx, ", ".join(SURVEY_TYPE_MAPPING)))
            continue
        if "default" in item and item["default"] != "" and not isinstance(item["default"], SURVEY_TYPE_MAPPING[qtype]):
            errors.append("Default value %s in survey question %d expected to be %s." % (
                item["default"], idx, qtype if qtype in ("integer", "float") else "string"))
        for key in ["min", "max"]:
            if key in item and item[key] is not None and not isinstance(item[key], int):
                errors.append("The %s limit in survey question %d expected to be integer." % (key, idx))
        if qtype in ("multiselect", "multiplechoice"):
            if "choices" not in item:
                errors.append("Survey question %d of type %s must specify choices." % (idx, qtype))
                continue
            if "default" in item:
                default = item["default"]
                defaults = [d for d in default.splitlines() if d.strip()] if isinstance(default, str) else list(default)
                if qtype == "multiplechoice" and len(defaults) > 1:
                    errors.append("Multiple Choice (Single Select) can only have one default value.")
                if any(choice not in _choices(item) for choice in defaults):
                    errors.append("Default choice must be answered from the choices listed.")
        if isinstance(item.get("default"), str) and item["default"].startswith("$encrypted$"):
            # only an existing password question may keep its stored default this way
            errors.append("$encrypted$ is a reserved keyword, may not be used for new default in position %d." % idx)
    return errors


def _range_errors(variable: str, value: Any, item: Dict[str, Any], cast: Callable[[Any], Any],
                  limit: Callable[[str], Any]) -> List[str]:
    """AWX's min/max check of an integer or float answer (the same in both branches of its source)."""
    errors = []
    if limit("min") is not None and value < cast(item["min"]):
        errors.append("'%s' value %s is too small (must be at least %s)." % (variable, value, item["min"]))
    if limit("max") is not None and value > cast(item["max"]):
        errors.append("'%s' value %s is too large (must be no more than %s)." % (variable, value, item["max"]))
    return errors


def answer_errors(item: Dict[str, Any], data: Dict[str, Any]) -> List[str]:
    """Why AWX would refuse this launch-time answer (or default) to one survey question."""
    variable, qtype = item["variable"], item["type"]
    if variable not in data:
        return ["'%s' value missing" % variable] if item["required"] else []
    value = data[variable]
    errors = []

    def limit(key: str) -> Any:
        return item.get(key) if item.get(key) not in ("", None) else None

    if qtype in ("textarea", "text", "password"):
        if not isinstance(value, str):
            return ["Value %s for '%s' expected to be a string." % (value, variable)]
        if limit("min") is not None and len(value) < int(item["min"]):
            errors.append("'%s' value %s is too small (length is %d must be at least %s)."
                          % (variable, value, len(value), item["min"]))
        if limit("max") is not None and len(value) > int(item["max"]):
            errors.append("'%s' value %s is too large (must be no more than %s)." % (variable, value, item["max"]))
    elif qtype == "integer":
        if not isinstance(value, int) or isinstance(value, bool):  # AWX: type(value) != int
            return ["Value %s for '%s' expected to be an integer." % (value, variable)]
        errors += _range_errors(variable, value, item, int, limit)
    elif qtype == "float":
        if not isinstance(value, (float, int)) or isinstance(value, bool):
            return ["Value %s for '%s' expected to be a numeric type." % (value, variable)]
        errors += _range_errors(variable, value, item, float, limit)
    elif qtype == "multiselect":
        if not isinstance(value, list):
            return ["'%s' value is expected to be a list." % variable]
        errors += ["Value %s for '%s' expected to be one of %s." % (v, variable, _choices(item))
                   for v in value if v not in _choices(item)]
    elif qtype == "multiplechoice" and value not in _choices(item):
        errors.append("Value %s for '%s' expected to be one of %s." % (value, variable, _choices(item)))
    return errors


def launch_extra_vars(spec: Dict[str, Any], answers: Dict[str, Any]) -> Dict[str, Any]:
    """The extra vars a launch with these answers gives the playbook: defaults that validate, then the answers.

    Raises when AWX would refuse the launch.
    """
    extra_vars: Dict[str, Any] = {}
    for item in spec["spec"]:
        if "default" in item and item["default"] is not None and not answer_errors(item, {item["variable"]: item["default"]}):
            extra_vars[item["variable"]] = item["default"]
    extra_vars.update(answers)
    errors = [error for item in spec["spec"] for error in answer_errors(item, extra_vars)]
    unknown = set(answers) - {item["variable"] for item in spec["spec"]}
    if errors or unknown:
        raise AssertionError("AWX would refuse this launch: %s" % (errors or "not in the survey: %s" % sorted(unknown)))
    return extra_vars
