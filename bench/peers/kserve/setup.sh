#!/usr/bin/env bash
# Creates bench/peers/kserve/.venv, the virtual environment of KServe's Python model server (kserve)
# (requirements.txt beside this script), a peer of the serving benchmark: bench/peers/model_servers.py
# runs this script when the environment is missing or requirements.txt changed since it last ran.
# Its packages come from the package index: the first run needs the network. PYTHON picks the
# interpreter (default python3.11, as loopline's own environment).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3.11}"
[ -x "$here/.venv/bin/python" ] || "$python" -m venv "$here/.venv"
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$here/.venv/bin/python" -c \
  "import kserve, importlib.metadata as m; print('kserve', m.version('kserve'), 'ready in', '$here/.venv')"
# Last, once everything installed: model_servers.py compares this copy with requirements.txt.
cp "$here/requirements.txt" "$here/.venv/requirements.installed"
