#!/usr/bin/env bash
# Creates bench/peers/nannyml/.venv, NannyML's own virtual environment (requirements.txt beside
# this script), the peer of `python -m bench cbpe` (bench/cbpe.py runs it when the environment is
# missing). Its packages come from the package index: the first run needs the network.
# PYTHON picks the interpreter (default python3.11, as loopline's own environment).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3.11}"
[ -x "$here/.venv/bin/python" ] || "$python" -m venv "$here/.venv"
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
NML_DISABLE_USAGE_LOGGING=1 "$here/.venv/bin/python" -c \
  "import nannyml; print('nannyml', nannyml.__version__, 'ready in', '$here/.venv')"
