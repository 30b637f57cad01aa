# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one piece of work per VM at the same time, keeping every outcome."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Sequence, Tuple, TypeVar, Union

from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError

Item = TypeVar("Item")
Result = TypeVar("Result")
MAX_PARALLEL_VMS = 32


def run_each(items: Sequence[Item], work: Callable[[Item], Result]) -> List[Tuple[Item, Union[Result, Exception]]]:
    """``work(item)`` for every item in parallel; an exception is returned, not raised,
    so that one VM's failure never leaves another VM's work unfinished."""
    if not items:
        return []

    def guarded(item: Item) -> Union[Result, Exception]:
        try:
            return work(item)
        except Exception as exc:  # noqa: BLE001 - reported per VM by the caller
            return exc

    with ThreadPoolExecutor(max_workers=min(len(items), MAX_PARALLEL_VMS)) as pool:
        return list(zip(items, pool.map(guarded, items)))


def run_per_vm(items: Sequence[Item], work: Callable[[Item], Result], vm_of: Callable[[Item], str]
               ) -> Tuple[List[Tuple[Item, Result]], List[Dict[str, Any]]]:
    """``run_each``, split into what succeeded and a report of what failed, per VM."""
    done: List[Tuple[Item, Result]] = []
    failures: List[Dict[str, Any]] = []
    for item, outcome in run_each(items, work):
        if isinstance(outcome, CprError):
            failures.append(outcome.as_dict())
        elif isinstance(outcome, Exception):
            failures.append(CprError("unexpected %s: %s" % (type(outcome).__name__, outcome), vm=vm_of(item)).as_dict())
        else:
            done.append((item, outcome))
    return done, failures


def summary(failures: Sequence[Dict[str, Any]]) -> str:
    return "; ".join("%s: %s" % (failure["vm"], failure["error"]) for failure in failures)
