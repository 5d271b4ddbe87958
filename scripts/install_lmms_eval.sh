#!/usr/bin/env bash
# Install lmms-eval 0.7.3 into .venv, so its `lmms-eval` command can run the kit's plugin models
# (prunevid_llava_onevision, prunevid_qwen2_5_vl, prunevid_llava_next_video; prunevid/integrations/lmms_eval/).
#
# lmms-eval declares torchvision (which would pull a CUDA torch over the kit's CPU one) and dozens of packages
# for models and metrics the kit never loads, while its core (the evaluator, the task registry and loader, the
# CLI) imports none of them. pip cannot say "--no-deps" in an optional extra, hence this script: lmms-eval itself
# with --no-deps, then only the packages that core imports. The torch and numpy already in .venv are pinned as
# constraints, so nothing here can replace them, and torchvision is never requested.
#
# Idempotent: a no-op (a fraction of a second) when .venv already holds lmms-eval 0.7.3 and everything below.
# Run by `make lmms-eval` and `make test`; never by `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LMMS_EVAL_VERSION=0.7.3
# What lmms-eval 0.7.3's core imports beyond the kit's own dependencies (found by importing lmms_eval.evaluator,
# lmms_eval.api.registry, lmms_eval.tasks and the CLI entry lmms_eval.__main__ with nothing else installed), and:
# - filelock<4: simple_evaluate patches filelock._api, a module filelock 4 no longer has;
# - opencv-python-headless: the videomme task's utils.py imports cv2 when lmms-eval loads that task.
DEPS=(loguru pytz evaluate sacrebleu sqlitedict pytablewriter jsonlines datasets tenacity "filelock<4"
      opencv-python-headless)

[ -x "$PY" ] || bash scripts/setup_venv.sh

# installed: lmms-eval at its version and every requirement above met (package metadata only, no torch import)
installed() {
  "$PY" - "$LMMS_EVAL_VERSION" "${DEPS[@]}" >/dev/null 2>&1 <<'PYEOF'
import importlib.metadata as m, sys
from packaging.requirements import Requirement
assert m.version("lmms-eval") == sys.argv[1]
for spec in sys.argv[2:]:
    req = Requirement(spec)
    assert req.specifier.contains(m.version(req.name), prereleases=True), spec
import lmms_eval  # noqa: F401  (its __init__ is empty: cheap)
PYEOF
}
if installed; then exit 0; fi

echo "installing lmms-eval==$LMMS_EVAL_VERSION (--no-deps) and its core's dependencies into .venv"
torch_version=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null) || {
  echo "error: .venv has no torch; run scripts/setup_venv.sh (make setup) first" >&2; exit 1; }
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# the kit's torch (CPU here, the user's CUDA build elsewhere) and numpy stay as they are
echo "torch==$torch_version" >"$constraints"
"$PY" -c "import numpy; print('numpy==' + numpy.__version__)" >>"$constraints"
"$PY" -m pip install -q -c "$constraints" "${DEPS[@]}"
"$PY" -m pip install -q --no-deps "lmms-eval==$LMMS_EVAL_VERSION"

# Checks: the core imports, torch is the one we started with, and torchvision did not sneak in.
"$PY" -c "import lmms_eval.evaluator, lmms_eval.api.registry, lmms_eval.tasks, lmms_eval.__main__" || {
  echo "error: lmms_eval $LMMS_EVAL_VERSION was installed but its core does not import (see above)" >&2; exit 1; }
now=$("$PY" -c "import torch; print(torch.__version__)")
if [ "$now" != "$torch_version" ]; then
  echo "error: torch changed from $torch_version to $now while installing lmms-eval" >&2; exit 1
fi
if "$PY" -m pip show -q torchvision >/dev/null 2>&1; then
  echo "error: torchvision is installed in .venv; the kit never uses it (pip uninstall torchvision)" >&2; exit 1
fi
echo "lmms-eval $LMMS_EVAL_VERSION installed (torch $now kept, no torchvision)"
