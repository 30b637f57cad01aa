# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What vm_info reports: each VM in scope, whether it may be saved and why not."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils import ram_verdict
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import carrying
from ansible_collections.liveupdate.cpr.plugins.module_utils.readiness import Readiness
from ansible_collections.liveupdate.cpr.plugins.module_utils.save import SaveOptions, assess_all, public_view
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import Scope, select


def info_host(opts: SaveOptions) -> Dict[str, Any]:
    journal = jr.Journal(opts.state_dir)
    records = {r["vm"]: r for r in journal.records()}
    scope = select(opts.qmp_dir, opts.vms, records)
    with carrying(scope.secrets):
        assessed = assess_all(scope.running, opts, check_outdated=True, records=records)
    return info_of(assessed, records, scope, opts.vms)


def info_of(assessed: Sequence[Readiness], records: Mapping[str, Dict[str, Any]], scope: Scope,
            names: Sequence[str]) -> Dict[str, Any]:
    """The VMs as assessed, and the journal's records of those that are not running."""
    overlaps = ram_verdict.overlapping_ranges({r.vm.name: r.vm.ram for r in assessed})
    running = {r.vm.name for r in assessed}
    saved = [public_view(record, record.get("phase", "unknown")) for name, record in sorted(records.items())
             if name not in running and (not names or name in names)]
    vms = [r.as_dict() for r in assessed]
    return {
        "changed": False,
        "vms": vms,
        "saved": saved,
        "all_ready": all(vm["ready"] for vm in vms) and not overlaps,
        "not_ready": {vm["name"]: vm["reasons"] for vm in vms if not vm["ready"]},
        "ram_overlaps": overlaps,
        "awaiting_restore": [r["vm"] for r in saved if r.get("phase") in jr.AWAITING_RESTORE],
        "warnings": scope.warnings,
        "secrets": scope.secrets,
    }
