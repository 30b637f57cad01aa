# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Paths compared as the kernel resolves them, so a symlink never takes a path in or out of a tree; small files read."""

from __future__ import annotations

import os


def is_under(path: str, *roots: str) -> bool:
    """Whether ``path`` is one of ``roots`` or lies below one of them."""
    real = os.path.realpath(path)
    for root in roots:
        top = os.path.realpath(root)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return True
    return False


def read_text(path: str) -> str:
    """A small file's content, stripped; "" when it cannot be read (a /proc or /sys file this kernel lacks)."""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""
