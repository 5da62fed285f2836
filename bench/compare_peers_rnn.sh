#!/usr/bin/env bash
# Training throughput of the reference RNN (bench/rnn_reference.yaml), attendo against a peer
# toolkit, measured one after the other on the same machine, 2 threads each, same window
# (updates 50..350, 64 sentences a batch), ratio computed from this one run.
#   PEERS=$HOME/peers bash bench/compare_peers_rnn.sh [onmt|joeynmt]
# Prints one JSON object. Run it on a quiet machine (nothing else using the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=${1:-onmt}
PEERS=${PEERS:-$HOME/peers}
PY=${PY:-python}
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PEERS_DATA=$PEERS/data
peer=$(PEERS=$PEERS bash bench/peer_throughput.sh "$PEER" rnn)
fp32=$($PY bench/train_throughput.py bench/rnn_reference.yaml train.precision=fp32 2>/dev/null | tail -1)
bf16=$($PY bench/train_throughput.py bench/rnn_reference.yaml train.precision=bf16 2>/dev/null | tail -1)
$PY - "$peer" "$fp32" "$bf16" <<'PY'
import json, sys
peer, fp32, bf16 = (json.loads(x) for x in sys.argv[1:])
key = "tgt_tok_per_s"
out = {"peer": peer, "attendo_fp32": fp32, "attendo_bf16": bf16,
       "ratio_fp32": round(fp32["tgt_tok_per_s_peers_formula"] / peer[key], 2),
       "ratio_bf16": round(bf16["tgt_tok_per_s_peers_formula"] / peer[key], 2)}
print(json.dumps(out, indent=2))
PY
