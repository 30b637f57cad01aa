"""Lab hosts only: a bytecode cache for Python modules imported from zip files (Ansible's AnsiballZ payloads).

Every Ansible module run ships its module and ``module_utils`` (about 400 KB of source for ``command``) in a zip,
and Python's zipimport compiles all of it again on each run: it neither reads nor writes ``__pycache__``. On a
TCG host that compile costs seconds per task, the biggest share of a module's start-up there, while on real
hardware it is a tenth of a second. The lab image installs this file beside Python's standard library and imports
it from ``sitecustomize``, so that ``make test`` spends its CPU on the rollout, not on compiling the same source
hundreds of times. Production hosts never get it; nothing in the collection depends on it.

The cache is keyed by the source's SHA-256 and the interpreter's version, lives in a root-only directory, and a
cached code object gets the file name of the zip it was imported from this time, so tracebacks stay true.
"""

import hashlib
import marshal
import os
import sys
import types
import zipimport

CACHE_DIR = "/var/cache/liveupdate-lab-pyc"
_compile_source = getattr(zipimport, "_compile_source", None)


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_with_filename(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _cache_path(source: bytes) -> str:
    digest = hashlib.sha256(sys.version.encode() + b"\0" + source).hexdigest()
    return os.path.join(CACHE_DIR, digest)


def _store(path: str, code: types.CodeType) -> None:
    try:
        os.makedirs(CACHE_DIR, mode=0o700, exist_ok=True)
        temporary = "%s.%d.tmp" % (path, os.getpid())
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            marshal.dump(code, handle)
        os.replace(temporary, path)  # another process may store the same entry at the same moment: either wins
    except OSError:
        pass  # a cache that cannot be written is a slower import, not a failure


def cached_compile_source(pathname: str, source: bytes) -> types.CodeType:
    """zipimport's ``_compile_source``, through the cache."""
    path = _cache_path(source)
    try:
        with open(path, "rb") as handle:
            code = marshal.load(handle)
    except (OSError, EOFError, ValueError, TypeError):
        code = _compile_source(pathname, source)  # type: ignore[misc]
        _store(path, code)
        return code
    return _with_filename(code, pathname) if code.co_filename != pathname else code


def install() -> bool:
    """Route zipimport's compiles through the cache; False where zipimport has no such seam, or not for root."""
    if _compile_source is None or os.geteuid() != 0:
        return False
    zipimport._compile_source = cached_compile_source  # type: ignore[attr-defined]
    return True


install()
