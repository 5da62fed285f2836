#!/usr/bin/env bash
# The reference Transformer of ../shared/peers (3+3 layers, d_model 256, 4 heads, ff 512;
# bench/transformer_reference.yaml), attendo against a peer toolkit, one after the other on
# the same machine, 2 threads each, in one run:
#   1. training throughput: the peer trains STEPS updates (default 800; its log gives the
#      50..350 window, as analyze.py measures it); attendo's window comes from
#      bench/train_throughput.py, in fp32 and in bf16;
#   2. decoding: each toolkit trains the same number of updates (STEPS) and decodes
#      test_2016_flickr (the peers' prep.py copy, 1000 sentences) with its own CLI/API, greedy
#      and beam 5, 64 sentences a batch, at most 100 output tokens, no length penalty.
#      The peer's "net" sents/s excludes start-up (a 1-sentence run), as RESULTS.md does;
#      attendo's is timed inside one process after loading the model (bench/decode_throughput.py),
#      in fp32, with decode.precision=bf16 and with decode.precision=int8.
#   PEERS=$HOME/peers PY=/work/venv/bin/python bash bench/compare_peers_transformer.sh [onmt]
# Prints one JSON object. Run it on a quiet machine (nothing else using the CPU). ~15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=${1:-onmt}
[ "$PEER" = onmt ] || { echo "only onmt is wired for decoding (Joey NMT is the slower peer)" >&2; exit 2; }
PEERS=${PEERS:-$HOME/peers}
PY=${PY:-python}
STEPS=${STEPS:-800}
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PEERS_DATA=$PEERS/data
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 CUDA_VISIBLE_DEVICES="" PYTHONWARNINGS=ignore
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

# 1+2a. peer: train (throughput window + checkpoint at STEPS), then decode
PD=$PEERS/runs/compare_${PEER}_transformer
peer=$(STEPS=$STEPS CAP_S=2400 OUTDIR=$PD PEERS=$PEERS bash bench/peer_throughput.sh "$PEER" transformer)
CK=$PD/model_step_${STEPS}.pt
[ -f "$CK" ] || { echo "peer checkpoint $CK missing" >&2; exit 1; }
peer_decode() {  # NAME BEAM INPUT -> seconds (wall, whole process)
  local t0 t1
  t0=$(date +%s.%N)
  "$PEERS/onmt/bin/onmt_translate" -model "$CK" -src "$PEERS_DATA/$3" -output "$W/peer.$1.en" \
    -beam_size "$2" -batch_size 64 -batch_type sents -max_length 100 -length_penalty none \
    -gpu -1 > "$W/peer.$1.log" 2>&1
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
p_start=$(peer_decode startup 1 test1.de)
p_greedy=$(peer_decode greedy 1 test.de)
p_beam5=$(peer_decode beam5 5 test.de)

# 2b. attendo: train the same number of updates, decode the same file
sed "s#\${PEERS_DATA}#$PEERS_DATA#g" bench/transformer_reference.yaml > "$W/attendo.yaml"
$PY -m attendo train "$W/attendo.yaml" train.out_dir="$W/attendo" train.max_steps="$STEPS" \
  train.valid_every=400 train.valid_bleu=false train.precision=bf16 > "$W/attendo_train.log" 2>&1
DEC=(decode.max_len=100 decode.max_len_ratio=100 decode.length_penalty=0)
ours=$($PY bench/decode_throughput.py --model "$W/attendo" --src "$PEERS_DATA/test.de" --beams 1 5 \
  --out "$W/attendo" "${DEC[@]}")
ours_bf16=$($PY bench/decode_throughput.py --model "$W/attendo" --src "$PEERS_DATA/test.de" --beams 1 5 \
  --out "$W/attendo_bf16" "${DEC[@]}" decode.precision=bf16)
ours_int8=$($PY bench/decode_throughput.py --model "$W/attendo" --src "$PEERS_DATA/test.de" --beams 1 5 \
  --out "$W/attendo_int8" "${DEC[@]}" decode.precision=int8)

# 1b. attendo training throughput (same window as the peer's)
fp32=$($PY bench/train_throughput.py bench/transformer_reference.yaml train.precision=fp32 2>/dev/null | tail -1)
bf16=$($PY bench/train_throughput.py bench/transformer_reference.yaml train.precision=bf16 2>/dev/null | tail -1)

$PY - "$peer" "$fp32" "$bf16" "$ours" "$ours_bf16" "$ours_int8" "$p_start" "$p_greedy" "$p_beam5" \
  "$W" "$PEERS_DATA/test.en" <<'PY'
import json, sys
import sacrebleu
peer, fp32, bf16, ours, ours_bf16, ours_int8 = (json.loads(x) for x in sys.argv[1:7])
p_start, p_greedy, p_beam5 = (float(x) for x in sys.argv[7:10])
w, ref_file = sys.argv[10], sys.argv[11]
refs = open(ref_file, encoding="utf-8").read().splitlines()
def bleu(path):
    hyps = open(path, encoding="utf-8").read().splitlines()
    return round(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score, 2), \
        round(sum(len(h.split()) for h in hyps) / len(hyps), 2)
n = len(refs)
dec = {}
for name, e2e in (("greedy", p_greedy), ("beam5", p_beam5)):
    b, L = bleu(f"{w}/peer.{name}.en")
    dec[f"peer_{name}"] = {"sents_per_s_net": round(n / (e2e - p_start), 1),
                           "sents_per_s_e2e": round(n / e2e, 1), "bleu_harness": b, "avg_hyp_len": L}
for tag, run, prefix in (("", ours, "attendo"), ("_bf16", ours_bf16, "attendo_bf16"),
                         ("_int8", ours_int8, "attendo_int8")):
    for name, beam in (("greedy", 1), ("beam5", 5)):
        b, L = bleu(f"{w}/{prefix}.beam{beam}.txt")
        dec[f"attendo{tag}_{name}"] = {"sents_per_s_net": run[f"beam{beam}"]["sents_per_s"],
                                       "bleu_harness": b, "avg_hyp_len": L}
key = "tgt_tok_per_s"
print(json.dumps({
    "peer_train": peer, "attendo_train_fp32": fp32, "attendo_train_bf16": bf16,
    "train_ratio_fp32": round(fp32["tgt_tok_per_s_peers_formula"] / peer[key], 2),
    "train_ratio_bf16": round(bf16["tgt_tok_per_s_peers_formula"] / peer[key], 2),
    "decode": dec, "peer_startup_s": round(p_start, 2), "attendo_decode": ours,
    "attendo_decode_bf16": ours_bf16, "attendo_decode_int8": ours_int8,
    **{f"decode_ratio_{name}{tag}": round(
        dec[f"attendo{tag}_{name}"]["sents_per_s_net"] / dec[f"peer_{name}"]["sents_per_s_net"], 2)
       for tag in ("", "_bf16", "_int8") for name in ("greedy", "beam5")},
}, indent=2))
PY
