# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only callback: append each task result as one JSON line to $RESULT_LOG.

ansible-core 2.19 no longer ships the json callback and Galaxy is out of
reach, so the tests read results through this instead.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: result_log
type: aggregate
short_description: Append task results as JSON lines to the file named by RESULT_LOG
description: Test helper of liveupdate.cpr.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "result_log"
    CALLBACK_NEEDS_ENABLED = True

    def _log(self, result, status):
        path = os.environ.get("RESULT_LOG")
        if not path:
            return
        entry = {"task": result.task_name, "host": result._host.get_name(), "status": status,
                 "result": result._result}
        with open(path, "a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")

    def v2_runner_on_ok(self, result):
        self._log(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._log(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._log(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._log(result, "unreachable")
