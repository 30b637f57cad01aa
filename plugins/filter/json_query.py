# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""jmespath queries over module results, without community.general (Galaxy is out of reach)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: json_query
short_description: Select data from a structure with a JMESPath query
version_added: 0.1.0
description:
  - Applies a JMESPath expression to its input, for example to pick the VMs of module results.
positional: expr
options:
  _input:
    description: The data to query.
    type: raw
    required: true
  expr:
    description: The JMESPath expression.
    type: str
    required: true
requirements:
  - jmespath (on the controller)
"""

EXAMPLES = r"""
- name: Names of the VMs that are not ready
  ansible.builtin.debug:
    msg: "{{ vm_facts | liveupdate.cpr.json_query('vms[?!ready].name') }}"
"""

RETURN = r"""
_value:
  description: The query's result.
  type: raw
"""

try:
    import jmespath
except ImportError:
    jmespath = None


def json_query(data: Any, expr: str) -> Any:
    if jmespath is None:
        raise AnsibleFilterError("liveupdate.cpr.json_query needs the jmespath library on the controller: "
                                 "pip install jmespath (it is in the collection's requirements.txt)")
    try:
        return jmespath.search(expr, _plain(data))
    except jmespath.exceptions.JMESPathError as exc:
        raise AnsibleFilterError("liveupdate.cpr.json_query: bad expression %r: %s" % (expr, exc)) from exc


def _plain(value: Any) -> Any:
    """The same data in built-in types.

    jmespath's functions check types by class name, so Ansible's subclasses (AnsibleUnsafeText on 2.16, tagged
    and lazy ones on 2.19) fail contains(), length() and the like as "unknown". Dropping unsafe here is safe:
    2.16 marks the whole template's result unsafe when it read unsafe data, and 2.19 never trusts a filter's output.
    """
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return str.__str__(value)  # AnsibleUnsafeText.__str__ returns itself
    for kind in (bool, int, float):  # bool first: it is an int too
        if isinstance(value, kind):
            return kind(value)
    return value


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"json_query": json_query}
