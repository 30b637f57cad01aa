#!/usr/bin/env bash
# ansible-test sanity, offline. ansible-test wants the collection at
# ansible_collections/NAMESPACE/NAME (a real path, not through a link) and
# downloads a pip bootstrap script that this network cannot reach; a
# stand-in that uses ensurepip does the same job.
set -euo pipefail
cd "$(dirname "$0")/.."
venv_python=${VENV_PYTHON:-.venv/bin/python}
# ansible-test runs from the same venv as that Python (another ansible-core than .venv's, say)
venv_bin=$(cd "$(dirname "$venv_python")" && pwd)
tree=build/ansible_collections/liveupdate/cpr

pip_version=$("$venv_python" - <<'PY'
import re, ansible_test, pathlib
source = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", source.read_text()).group(1))
PY
)
# the venv's own Python (3.11 on Debian 12, 3.13 on Debian 13): ansible-test fails on a --python not installed
python_version=$("$venv_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
standin=~/.ansible/test/cache/get_pip_${pip_version//./_}.py
if [ ! -s "$standin" ]; then
  mkdir -p "$(dirname "$standin")"
  printf '%s\n' 'import subprocess, sys' \
    'subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])' > "$standin"
fi

rm -rf build/ansible_collections
mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard | grep -zv '^\.dev-collections/' \
  | rsync -a --from0 --files-from=- ./ "$tree/"
cd "$tree"
git init -q . && git add -A >/dev/null  # ansible-test lists files through git
PATH="$venv_bin:$PATH" ansible-test sanity --python "$python_version" --requirements --color no "$@"
