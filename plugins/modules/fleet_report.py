#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_report
short_description: Write the rollout report (JSON and HTML with a timeline) and return its summary table
version_added: 0.1.0
description:
  - Runs on the controller, delegated from each host as it finishes (or fails), so that a batch that aborts the
    rollout still leaves a report of every host reached.
  - Merges O(hosts) into C(liveupdate-RUN.json) in O(report_dir) (under a file lock, since hosts of one batch finish
    together), rewrites C(liveupdate-RUN.html), and points C(latest.json) and C(latest.html) at them.
  - The HTML holds an SVG timeline of batches, hosts, phases and each VM's pause-to-resume bar.
  - Returns the readable summary table. Writing a report is not a change, so idempotence checks are not disturbed.
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
options:
  report_dir:
    description: Directory on the controller for the reports. Empty writes nothing and only returns the table.
    type: path
    default: ""
  run:
    description: Facts of the run (run_id, reboot_method, batch, started).
    type: dict
    default: {}
  hosts:
    description: One record per host as the C(liveupdate.cpr.liveupdate) role leaves it in C(liveupdate_host_report).
    type: list
    elements: dict
    default: []
attributes:
  check_mode:
    description: Returns the table; writes nothing.
    support: full
  diff_mode:
    description: No diff.
    support: none
  idempotent:
    description: Always reports no change.
    support: full
"""

EXAMPLES = r"""
- name: Write the report
  liveupdate.cpr.fleet_report:
    # reports/ where ansible-playbook runs, as kernel-live-update.yml defaults: never inside an installed collection
    report_dir: "{{ 'reports' | realpath }}"
    run: {run_id: "20261125T120000"}
    hosts: "{{ ansible_play_hosts_all | map('extract', hostvars, 'liveupdate_host_report') | select('defined') | list }}"
"""

RETURN = r"""
table:
  description: The summary table of every host of the run so far.
  type: str
  returned: always
table_lines:
  description: The summary table; line by line.
  type: list
  elements: str
  returned: always
failed_hosts:
  description: Hosts whose status is failed.
  type: list
  elements: str
  returned: always
vms_down:
  description: HOST/VM of every VM left down.
  type: list
  elements: str
  returned: always
json_path:
  description: Path of the JSON report.
  type: str
  returned: when written
html_path:
  description: Path of the HTML report.
  type: str
  returned: when written
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.liveupdate.cpr.plugins.module_utils import boundary
from ansible_collections.liveupdate.cpr.plugins.module_utils.report import ReportOptions, write_report


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "report_dir": {"type": "path", "default": ""},
            "run": {"type": "dict", "default": {}},
            "hosts": {"type": "list", "elements": "dict", "default": []},
        },
        supports_check_mode=True)
    boundary.run(module, write_report, ReportOptions, needs_qmp=False)


if __name__ == "__main__":
    main()
