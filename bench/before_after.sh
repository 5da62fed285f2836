#!/usr/bin/env bash
# Speed of two checkouts of attendo, alternating, one job at a time, 2 threads: training
# throughput of the reference RNN and Transformer and decoding speed of two model directories.
#
#   bash bench/before_after.sh OLD_CHECKOUT NEW_CHECKOUT RNN_MODEL TF_MODEL TEST_SRC OUT_DIR
#
# PEERS_DATA must hold train.{de,en} and val200.{de,en} (see bench/rnn_reference.yaml). Each
# side runs its own bench scripts with PYTHONPATH set to its checkout; JSON lands in OUT_DIR as
# {train_rnn,train_tf,decode_rnn,decode_tf}_{before,after}_{1,2}.json.
set -u
OLD=$(realpath "$1"); NEW=$(realpath "$2"); RNN=$(realpath "$3"); TF=$(realpath "$4")
SRC=$(realpath "$5"); OUT=$(realpath "$6")
PY=${PY:-python3}
export OMP_NUM_THREADS=2
mkdir -p "$OUT"
for round in 1 2; do
  for side in before after; do
    if [ "$side" = before ]; then ROOT=$OLD; else ROOT=$NEW; fi
    run() { (cd /tmp && PYTHONPATH=$ROOT "$PY" "$@"); }
    run "$ROOT/bench/train_throughput.py" "$ROOT/bench/rnn_reference.yaml" --warmup 20 --steps 140 \
      > "$OUT/train_rnn_${side}_$round.json"
    run "$ROOT/bench/train_throughput.py" "$ROOT/bench/transformer_reference.yaml" --warmup 10 \
      --steps 90 > "$OUT/train_tf_${side}_$round.json"
    run "$ROOT/bench/decode_throughput.py" --model "$RNN" --src "$SRC" --beams 1 5 --threads 2 \
      > "$OUT/decode_rnn_${side}_$round.json"
    run "$ROOT/bench/decode_throughput.py" --model "$TF" --src "$SRC" --beams 1 5 --threads 2 \
      > "$OUT/decode_tf_${side}_$round.json"
  done
done
