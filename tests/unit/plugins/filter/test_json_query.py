"""json_query: jmespath's functions work on the data a play hands the filter, on every supported ansible-core."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml
from ansible_run import run_playbook

from ansible_collections.liveupdate.cpr.plugins.filter.json_query import json_query

QUERIES = {
    "contains": "vms[?contains(name, 'a')].name",
    "length": "length(vms)",
    "sort_by": "sort_by(vms, &n)[].name",
    "type": "type(vms[0].name)",
}
EXPECTED = {"contains": ["a1"], "length": 2, "sort_by": ["a1", "b2"], "type": "string"}


def test_subclasses_of_the_builtin_types_are_queried_as_those_types():
    # Ansible's own types are subclasses such as these; jmespath saw them as "unknown"
    text = type("AnsibleUnsafeText", (str,), {})
    mapping = type("_AnsibleLazyTemplateDict", (dict,), {})
    sequence = type("_AnsibleLazyTemplateList", (list,), {})
    data = mapping(vms=sequence([mapping(name=text("b2"), n=2), mapping(name=text("a1"), n=1)]))
    assert {name: json_query(data, query) for name, query in QUERIES.items()} == EXPECTED


def test_functions_over_vars_and_registered_results_in_a_play():
    """Play vars from YAML (AnsibleMapping, AnsibleUnicode on 2.16) and a registered result (unsafe text on 2.16)."""
    document = {"vms": [{"name": "b2", "n": 2}, {"name": "a1", "n": 1}]}
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.json"
        inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
            "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}))
        playbook = Path(tmp) / "query.yml"
        tasks = [
            {"ansible.builtin.command": {"argv": ["echo", "a1"]}, "register": "out", "changed_when": False},
            {"ansible.builtin.debug": {"msg": "{{ {item: data | liveupdate.cpr.json_query(queries[item])} }}"},
             "loop": sorted(QUERIES)},
            {"ansible.builtin.debug": {"msg": "{{ out | liveupdate.cpr.json_query('contains(stdout, `a`)') }}"}},
        ]
        playbook.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False,
                                             "vars": {"queries": QUERIES, "data": document}, "tasks": tasks}]))
        run = run_playbook(playbook, inventory=inventory)
    assert run.rc == 0, run.stdout
    looped, registered = run.results()[-2:]
    answers = {}
    for item in looped["results"]:
        answers.update(item["msg"])
    assert answers == EXPECTED
    assert registered["msg"] is True
