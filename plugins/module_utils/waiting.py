# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one bounded wait of the engine: look, and look again until a deadline.

Every wait on QEMU (its monitor, its process, its migration) is bounded, so
a QEMU that hangs costs a timeout and an error, never a hung task.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar, Union

T = TypeVar("T")


class Deadline:
    """``timeout`` seconds from now, on the monotonic clock."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.at = time.monotonic() + timeout

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return time.monotonic() > self.at


def wait_until(check: Callable[[], Optional[T]], timeout: Union[float, Deadline], interval: float,
               pause: Callable[[float], object] = time.sleep) -> Optional[T]:
    """``check()`` until it returns a truthy value, which is returned; None once the deadline has passed.

    ``check`` runs at least once, and once more after a pause that crossed the
    deadline, so a slow pause never hides a condition that came true. It may
    raise to give up early. ``pause(interval)`` waits between looks; a caller
    that can be woken by what it waits for (a QMP event) passes its own.
    """
    deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout)
    while True:
        value = check()
        if value:
            return value
        if deadline.passed():
            return None
        pause(interval)
