#!/usr/bin/env bash
# Wheels for `python -m bench gpu` on a GPU machine without network (see bench/gpu.py): everything the
# project needs beyond the torch (and its CUDA libraries) that machine already has.
#
#   bash bench/gpu_wheels.sh [DEST]        # on a machine with network, in the repository; DEST=.whl
#
# Then copy the repository with DEST to the GPU machine and, in its Python with torch:
#   python -m pip install --no-index --find-links .whl -e .
#
# Target (override by environment): GPU_PYTHON_VERSION=3.12 (its torch, 2.11 with CUDA 13, stays as it is),
# GPU_PLATFORMS: the wheel platform tags it runs, x86_64 glibc >= 2.28 as torch's CUDA 13 wheels need (pip
# takes exactly the tags it is given: manylinux_2_28 does not imply the manylinux2014 that Ray ships).
# PYTHON (default .venv/bin/python) runs pip here and builds DeepSpeed's wheel, which needs torch in it.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python=${PYTHON:-.venv/bin/python}
gpu_python=${GPU_PYTHON_VERSION:-3.12}
platforms=${GPU_PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
  manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64}
target=(--only-binary=:all: --python-version "$gpu_python" --implementation cp --abi "cp${gpu_python/./}")
for platform in $platforms; do target+=(--platform "$platform"); done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"

# DeepSpeed publishes no wheel: build its pure-Python one here, at the version PYTHON has (the tested one).
deepspeed=$("$python" -m pip freeze | grep -i '^deepspeed==' || echo deepspeed)
echo "[gpu_wheels] building the $deepspeed wheel" >&2
"$python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dest" "$deepspeed"

# What the project needs on the target, resolved for it: its dependencies but torch, with DeepSpeed's
# own (from the wheel just built) in place of DeepSpeed, so that nothing pulls torch and its CUDA libraries.
"$python" - "$dest" > "$work/requirements.txt" <<'EOF'
import glob, re, sys, tomllib, zipfile
project = tomllib.load(open("pyproject.toml", "rb"))
deps = [d for d in project["project"]["dependencies"] if not re.match(r"(torch|deepspeed)\b", d)]
with zipfile.ZipFile(sorted(glob.glob(f"{sys.argv[1]}/deepspeed-*.whl"))[-1]) as wheel:
    meta = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
for line in meta.splitlines():
    if line.startswith("Requires-Dist:") and "extra ==" not in line and not re.match(r"Requires-Dist: torch\b", line):
        deps.append(line.split(":", 1)[1].strip())
print("\n".join(deps + project["build-system"]["requires"] + ["wheel"]))
EOF
"$python" -m pip install --quiet --dry-run --ignore-installed --target "$work/none" --report "$work/report.json" \
  "${target[@]}" -r "$work/requirements.txt"
"$python" - "$work/report.json" > "$work/wanted.txt" <<'EOF'
import json, sys
found = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
if "torch" in found:
    sys.exit("gpu_wheels: a dependency other than DeepSpeed needs torch; add it to the DeepSpeed step")
print("\n".join(f"{name}=={version}" for name, version in sorted(found.items())))
EOF
echo "[gpu_wheels] downloading $(wc -l < "$work/wanted.txt") wheels into $dest" >&2
"$python" -m pip download --quiet --no-deps "${target[@]}" --find-links "$dest" -d "$dest" -r "$work/wanted.txt"
echo "[gpu_wheels] done: $(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest" >&2
echo "on the GPU machine: python -m pip install --no-index --find-links $dest -e ." >&2
