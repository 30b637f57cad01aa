# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one piece of work per VM at the same time, keeping every outcome."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Sequence, Tuple, TypeVar, Union

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
