#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.py on the bare GPU machine (Python 3.12, x86_64, its own CUDA torch 2.11, no network).
#
# Downloads into .whl/ (repo root, git-ignored) the packages prefopt needs that the machine's image lacks or holds at
# another version, at the exact versions of this repo's CPU virtualenv (.venv/bin/pip freeze), one version each,
# --no-deps (every needed dependency is named below), then prints each wheel's size and the total, which must stay
# under the 64 MiB a device call may carry (with the working tree, which travels too). prefopt itself is not a wheel
# here: the device copies the working tree, and the run command installs it from there into the same folder
# (`pip install ... --no-build-isolation --target /tmp/site .whl/*.whl .`), so the code measured is the tree as sent,
# never a stale wheel. `PYTHONPATH=.` alone is not enough: setup.cfg maps the top-level losses/ and data/ folders to
# prefopt.losses and prefopt.data, which only an install (or this venv's editable finder) provides.
#
#     bash benchmarks/gpu_wheels.sh          # then carry [".whl"] in the device call (see gpu_check.py's docstring)
#
# Left out on purpose: torch, numpy, scipy, pyyaml, pandas, pyarrow, safetensors, tokenizers, regex, xxhash, psutil,
# jinja2, requests, tqdm, packaging, filelock, typer, hf-xet: KINDS.md lists them in the image (regex, tokenizers and
# safetensors at versions transformers' import-time check accepts; the others' versions there were not read: datasets
# wants pyarrow>=24, huggingface_hub hf-xet>=1.6 (downloads only); if an import fails there, add the package here).
# bitsandbytes ships one native library per CUDA version (42 MiB in all); the machine's torch is cu130, so
# BNB_KEEP_REGEX (below) trims the others out of its wheel (to ~7 MiB), or the call would not fit the limit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.whl"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
LIMIT_MIB=64

# name==version: the venv's versions. Why each is here:
PACKAGES=(
  trl==1.16.0               # missing
  transformers==5.25.0      # image has 5.17.0
  peft==0.22.0              # image's version unknown; pinned to the venv's
  bitsandbytes==0.50.2      # missing
  datasets==5.2.0           # missing
  evaluate==0.4.6           # missing (prefopt install_requires)
  gguf==0.19.0              # missing (prefopt install_requires)
  accelerate==1.16.0        # image has 1.15.0
  huggingface_hub==2.5.0    # image has 1.33.0; transformers 5.25 checks for >=2.4 at import
  kernels==0.19.1           # missing; transformers 5.25 requires it
  tomlkit==0.15.3           # missing; kernels requires it
  httpx2==2.17.0            # missing; huggingface_hub 2.x requires it
  httpcore2==2.17.0         # missing; httpx2 requires it
  truststore==0.10.5        # missing; httpx2/httpcore2 require it
  click==8.5.1              # huggingface_hub 2.5 requires >=8.4.2; the image's version is unknown
  dill==0.4.1               # missing; datasets requires <0.4.2
  multiprocess==0.70.19     # missing; datasets requires <0.70.20
  fsspec==2026.9.0          # datasets requires <=2026.9.0; the image's version is unknown
)
# bitsandbytes' native libraries kept in its trimmed wheel: the CPU one and CUDA 13.x (the machine's torch is cu130).
BNB_KEEP_REGEX='libbitsandbytes_(cpu|cuda13[0-9])\.so$'

PLATFORMS=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

mkdir -p "$DEST"
grep -qxF '/.whl/' "$ROOT/.gitignore" || { echo "add /.whl/ to .gitignore first" >&2; exit 1; }
rm -f "$DEST"/*.whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${PACKAGES[@]}"

# Trim bitsandbytes: drop the native libraries of other CUDA versions (pip does not check RECORD hashes on install).
for wheel in "$DEST"/bitsandbytes-*.whl; do
  drop=$("$PYTHON" - "$wheel" "$BNB_KEEP_REGEX" <<'EOF'
import re, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
print("\n".join(n for n in names if re.search(r"libbitsandbytes_\w+\.(so|dll|dylib)$", n) and not re.search(sys.argv[2], n)))
EOF
)
  if [ -n "$drop" ]; then
    echo "trimming $(echo "$drop" | wc -l) native libraries of other CUDA versions from $(basename "$wheel") ($(du -m "$wheel" | cut -f1) MiB before)"
    "$PYTHON" - "$wheel" "$BNB_KEEP_REGEX" <<'EOF'
import os, re, sys, zipfile
path, keep = sys.argv[1], sys.argv[2]
trimmed = path + ".tmp"
with zipfile.ZipFile(path) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
    for item in source.infolist():
        if re.search(r"libbitsandbytes_\w+\.(so|dll|dylib)$", item.filename) and not re.search(keep, item.filename):
            continue
        target.writestr(item, source.read(item.filename))
os.replace(trimmed, path)
EOF
  fi
done

count=$(ls "$DEST"/*.whl | wc -l)
if [ "$count" -ne "${#PACKAGES[@]}" ]; then
  echo "expected ${#PACKAGES[@]} wheels, found $count (two versions of one package stop the install)" >&2
  exit 1
fi
ls -l "$DEST"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5 / 1048576, $NF}' | sed "s|$DEST/||"
total=$(cat "$DEST"/*.whl | wc -c)
printf "total: %.2f MiB in %d wheels (limit %d MiB for everything a device call carries)\n" "$(echo "$total / 1048576" | bc -l)" "$count" "$LIMIT_MIB"
tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
printf "with the working tree that travels beside them (%.2f MiB): %.2f MiB\n" "$(echo "$tree / 1048576" | bc -l)" \
  "$(echo "($total + $tree) / 1048576" | bc -l)"
if [ $((total + tree)) -ge $((LIMIT_MIB * 1048576)) ]; then
  echo "over the limit" >&2
  exit 1
fi
