"""The lab image's bytecode cache for zip imports (lab/host/zip_bytecode_cache.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

CACHE_MODULE = Path(__file__).resolve().parents[3] / "lab" / "host" / "zip_bytecode_cache.py"

# run in a child: the hook patches zipimport for the whole interpreter
CHILD = textwrap.dedent("""
    import sys, traceback, zipimport
    sys.path.insert(0, sys.argv[2])
    import zip_bytecode_cache as cache
    cache.CACHE_DIR = sys.argv[1]
    compiled = []
    original = cache._compile_source
    cache._compile_source = lambda path, source: compiled.append(path) or original(path, source)
    zipimport._compile_source = cache.cached_compile_source
    sys.path.insert(0, sys.argv[3])
    import payload
    try:
        payload.fail()
    except RuntimeError:
        print(len(compiled), traceback.extract_tb(sys.exc_info()[2])[-1].filename)
""")


def run_payload(tmp_path: Path, name: str) -> str:
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("payload.py", "def fail():\n    def inner():\n        raise RuntimeError('x')\n    inner()\n")
    return subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "cache"), str(CACHE_MODULE.parent),
                           str(archive)], capture_output=True, text=True, check=True).stdout.split()


def test_a_payload_is_compiled_once_and_its_tracebacks_name_the_zip_it_came_from(tmp_path):
    assert run_payload(tmp_path, "first.zip") == ["1", str(tmp_path / "first.zip" / "payload.py")]
    assert run_payload(tmp_path, "second.zip") == ["0", str(tmp_path / "second.zip" / "payload.py")]
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
