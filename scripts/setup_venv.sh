#!/usr/bin/env bash
# Create .venv (once) and install the kit into it. Installs torch==2.13.0 (a CPU build from PyPI) only when
# no torch is importable, so GPU users who bring their own torch keep it; never installs torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY=$c; break; fi
  done
fi
stamp=.venv/.prunevid-installed
# Up to date: installed since pyproject.toml last changed, and the kit's entry points are registered (lmms-eval finds
# the plugin models in the group lmms_eval.models: they exist only once the kit is installed from this pyproject.toml).
registered() {
  .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(not any(e.value.startswith('prunevid.') for e in m.entry_points(group='lmms_eval.models')))" 2>/dev/null
}
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && registered; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -m ipykernel install --sys-prefix --name prunevid-kit --display-name "PruneVid kit (venv)" >/dev/null
touch "$stamp"
