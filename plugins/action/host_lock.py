# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host lock, with the one check only the controller can make: is the lock's holder still alive?

A SIGKILLed ansible-playbook leaves its locks behind with a fresh heartbeat. Its rerun would be refused for
``stale_after`` seconds, though the controller can see that the holder is gone. This plugin writes the controller's
ansible-playbook process into the lock, and when the lock is refused, takes it over only if that process, checked
here, is proven dead (module_utils/host_lock.holder_gone).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ansible.plugins.action import ActionBase

from ansible_collections.liveupdate.cpr.plugins.module_utils.host_lock import holder_gone, with_process

MODULE = "liveupdate.cpr.host_lock"


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible has no type hints
    TRANSFERS_FILES = False

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        task_vars = task_vars or {}
        super().run(tmp, task_vars)
        # a worker's parent is the ansible-playbook process itself, which holds the lock for the whole run
        args, here = with_process(dict(self._task.args), os.getppid())
        result: Dict[str, Any] = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        held = result.get("lock") if result.get("failed") else None
        if not isinstance(held, dict) or args.get("state", "present") != "present" or not held.get("nonce"):
            return result
        why = holder_gone((held.get("owner") or {}).get("process"), here)
        if why is None:
            return result
        taken: Dict[str, Any] = self._execute_module(
            module_name=MODULE, module_args=dict(args, take_over_nonce=held["nonce"]), task_vars=task_vars)
        if not taken.get("failed"):
            # the fleet-wide preflight only checks (check mode): the host's own batch takes the lock over
            done = "took over" if taken.get("acquired") else "will take over"
            taken.setdefault("warnings", []).append(
                "%s the lock of run %s: %s. Its VMs are where the journal says; this run carries on from "
                "there." % (done, held.get("run_id"), why))
        return taken
