"""The local fleet lab's "QEMU package update": put a new build where the VMs' binary is.

Used through the public liveupdate_qemu_update_command variable, exactly as an
operator would plug in a custom build. Idempotent: it prints CHANGED only when it
replaced the binary, and it replaces it the way dpkg does (new file, renamed over
the old one), so running QEMUs keep the old, now deleted, inode.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys


def main(source: str, dest: str) -> int:
    if os.path.exists(dest) and filecmp.cmp(source, dest, shallow=False):
        return 0
    temp = dest + ".new"
    shutil.copyfile(source, temp)
    os.chmod(temp, 0o755)
    os.rename(temp, dest)
    print("CHANGED %s" % dest)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
