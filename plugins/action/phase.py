# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One task per phase edge: the time on the controller, and the lock's heartbeat on the host.

Marking a phase used to take five tasks (two includes, two set_facts and a host_lock call); on a small host each
costs a second, and inside a blackout every second is the guests'.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from ansible.plugins.action import ActionBase

from ansible_collections.liveupdate.cpr.plugins.module_utils.host_lock import with_process

ARGUMENT_SPEC: Dict[str, Any] = {
    "name": {"type": "str", "required": True},
    "edge": {"type": "str", "choices": ["start", "end"], "default": "start"},
    "lock": {"type": "dict"},
}


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible has no type hints
    TRANSFERS_FILES = False

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        task_vars = task_vars or {}
        result: Dict[str, Any] = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        name, edge = args["name"], args["edge"]
        # a new rollout of this host starts its marks afresh, whatever a fact cache kept from the last one
        fresh = name == "preflight" and edge == "start"
        phases = {} if fresh else dict(task_vars.get("ansible_facts", {}).get("liveupdate_phases") or {})
        phases[name] = dict(phases.get(name) or {}, **{edge: round(time.time(), 6)})
        facts: Dict[str, Any] = {"liveupdate_phases": phases}
        if edge == "start":
            facts["liveupdate_phase"] = name
        if args["lock"] and edge == "start":
            # the refresh keeps the controller's process in the lock (plugins/action/host_lock.py)
            lock_args = with_process(dict(args["lock"], phase=name), os.getppid())[0]
            lock = self._execute_module(module_name="liveupdate.cpr.host_lock", module_args=lock_args,
                                        task_vars=task_vars)
            if lock.get("failed"):
                return dict(lock, ansible_facts=facts)
            result["lock"] = lock.get("held_by")
        result.update(changed=False, ansible_facts=facts)
        return result
