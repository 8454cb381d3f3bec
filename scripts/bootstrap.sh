#!/usr/bin/env bash
# Creates or refreshes .venv so that `make demo` / `make test` work on a fresh machine.
# The venv is rebuilt only when pyproject.toml or constraints.txt changed (a hash stamp),
# so repeated commands start in a second.
#
# torch: on a CPU machine constraints.txt pins the CPU build; a CUDA torch that is already
# in the venv (a GPU cluster) is kept by pinning its exact version instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp_file=.venv/.avsa-stamp
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] setting up .venv (first run takes a few minutes)" >&2
start=$(date +%s)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
constraints=constraints.txt
cuda_torch=$(.venv/bin/python -c 'import torch; print(torch.__version__ if torch.version.cuda else "")' 2>/dev/null || true)
if [ -n "$cuda_torch" ]; then
  constraints=.venv/constraints-local.txt
  echo "torch==$cuda_torch" > "$constraints"
  echo "[bootstrap] keeping the installed CUDA torch $cuda_torch" >&2
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c "$constraints" -e '.[dev]'
echo "$want" > "$stamp_file"
echo "[bootstrap] .venv ready in $(( $(date +%s) - start )) s ($(du -sh .venv | cut -f1))" >&2
