#!/usr/bin/env bash
# `make gpu-check`: runs on the machine as it is: its own python3 and preinstalled (CUDA) torch, no
# package registry needed. What mixopt needs and that machine lacks travels as wheels in .whl/
# (`make gpu-wheels` on a developer's machine), installed offline into a scratch folder, never into
# the machine's own site-packages. Then bench/gpu_check.py runs every step under one deadline
# (default 480 s) and writes gpu.json, the steps' logs and summary.txt into $OUT (or --out).
# Without a CUDA GPU: one line, a gpu.json that says "skipped", exit 0. `--rehearse`: the same steps,
# small, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import mixopt.cli' 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  SITE="${TMPDIR:-/tmp}/mixopt-gpu-site"
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
exec "$PY" bench/gpu_check.py "$@"
