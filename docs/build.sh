#!/usr/bin/env bash
# Build the documentation site into site/ (offline; any warning is an error).
# Read it while writing instead: python docs/gen_reference.py && mkdocs serve
set -euo pipefail
export NO_MKDOCS_2_WARNING=1  # the Material theme's end-of-life banner (not a build warning)
cd "$(dirname "$0")/.."
PY=${PY:-python}
if [ -x .venv/bin/python ] && [ "$PY" = python ]; then PY=.venv/bin/python; fi
"$PY" docs/gen_reference.py
"$PY" -m mkdocs build --strict --site-dir site "$@"
