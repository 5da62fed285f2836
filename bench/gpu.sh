#!/usr/bin/env bash
# bench/gpu.sh [--cpu-smoke] [--pack]
#
# The one-GPU benchmark: one command, at most 8 minutes (BENCH_TOTAL_MIN), no network. For the
# small and the base Transformer and the RNN: training target tok/s, MFU against a bf16 matmul
# peak measured in the same run, SM busy %, peak GPU memory, sacreBLEU on test_2016_flickr
# after a fixed number of minutes, beam-5 decoding sentences/s and tokens/s; then Joey NMT 2.3
# trained on the same card with the same model and batch size, and the attendo/Joey ratio.
# Definitions, phases and every knob: bench/gpu_bench.py's docstring.
#
# Prints one JSON object on stdout (a Markdown table on stderr); writes result.json,
# result.md, gpu_bench.log and details/ (per-phase logs, hypotheses, the peer's config) into
# $OUT if set, else ./gpu_bench_out. --pack packs details/ into details.tar.gz.
# Without a CUDA GPU it prints {"gpu": null, "reason": ...} and exits 0.
# --cpu-smoke: the same code on the CPU, tiny models, a few seconds each (no peer unless
# BENCH_PEER=1), to test the logic without a GPU.
#
# Needs: a python with torch (PY, default python3) and attendo's dependencies (sentencepiece,
# sacrebleu, safetensors, PyYAML); attendo itself comes from this checkout. Data: Multi30k in
# $MULTI30K_DIR or ../shared/data/multi30k (train.{de,en}.gz, test_2016_flickr.{de,en}.gz).
# Peer: Joey NMT if importable, else JOEYNMT_WHEELS=DIR (made by bench/gpu_wheels.sh DIR on a
# machine with network), else the peer row says "not run" and why.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PY=${PY:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# a hard stop a little after the driver's own deadline, in case a phase hangs (the driver
# turns SIGTERM into a partial result.json and JSON line)
LIMIT_S=$("$PY" -c "import os; print(int(float(os.environ.get('BENCH_TOTAL_MIN') or 8) * 60 + 20))" 2>/dev/null || echo 500)
for a in "$@"; do
  if [ "$a" = --cpu-smoke ]; then
    LIMIT_S=$("$PY" -c "import os; print(int(float(os.environ.get('BENCH_SMOKE_TOTAL_S') or 150) + 30))" 2>/dev/null || echo 180)
  fi
done
exec timeout --signal=TERM --kill-after=20 "$LIMIT_S" "$PY" "$HERE/gpu_bench.py" "$@"
