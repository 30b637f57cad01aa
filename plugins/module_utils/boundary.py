# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The only place where engine errors become fail_json."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterable, Type, TypeVar

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError
from ansible_collections.liveupdate.cpr.plugins.module_utils.guest_agent import SUSPEND_POLICIES, TIME_SYNC_POLICIES
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import QMP_IMPORT_ERROR
from ansible_collections.liveupdate.cpr.plugins.module_utils.ram_verdict import RAM_POLICIES

Options = TypeVar("Options")


def run(module: AnsibleModule, engine: Callable[[Options], Dict[str, Any]], options: Type[Options],
        needs_qmp: bool = True) -> None:
    """Build ``options`` from the module's params, run ``engine`` and exit with its result or its error."""
    if needs_qmp and QMP_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("qemu.qmp"), exception=QMP_IMPORT_ERROR)
    per_vm = (("ram_policy_per_vm", RAM_POLICIES), ("guest_time_sync_per_vm", TIME_SYNC_POLICIES),
              ("guest_suspend_per_vm", SUSPEND_POLICIES))
    for option, allowed in per_vm:
        bad = {vm: policy for vm, policy in (module.params.get(option) or {}).items() if policy not in allowed}
        if bad:
            module.fail_json(msg="%s: %s; each policy must be one of %s." % (
                option, ", ".join("%s=%s" % item for item in sorted(bad.items())), ", ".join(allowed)))
    names = {f.name for f in dataclasses.fields(options)}  # type: ignore[arg-type]
    unknown = sorted(set(module.params) - names)
    if unknown:
        # a programming error: the operator's value would be ignored without a word
        module.fail_json(msg="module bug: %s has no field for the option(s) %s; the engine would ignore them." % (
            options.__name__, ", ".join(unknown)))
    try:
        result = engine(options(check_mode=module.check_mode, **module.params))  # type: ignore[call-arg]
    except CprError as exc:
        _hide_secrets(module, exc.secrets)
        details = exc.as_dict()
        module.fail_json(msg=str(exc), **{k: v for k, v in details.items() if k not in ("msg", "failed")})
    _hide_secrets(module, result.pop("secrets", ()))
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


def _hide_secrets(module: AnsibleModule, secrets: Iterable[str]) -> None:
    """Ansible masks these strings wherever they would appear in output or logs."""
    module.no_log_values.update(secrets)
