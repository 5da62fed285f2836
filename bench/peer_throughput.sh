#!/usr/bin/env bash
# bench/peer_throughput.sh TOOLKIT [CONFIG]   (TOOLKIT: onmt | joeynmt; CONFIG: rnn (default) | transformer)
# Needs the peers venvs and prepared data in $PEERS (../shared/peers/scripts/setup_venvs.sh,
# then prep.py into $PEERS/data).
#
# Training-throughput measurement of a peer toolkit's RNN or Transformer config, defined exactly
# as /work/shared/peers/scripts/analyze.py defines it:
#     sents/s = (350-50)*64 / (wall time between the log lines of update 50 and 350)
#     tgt tok/s = sents/s * 14.13 (mean target length of train.en incl. EOS)
#     own_logged_tok_per_s = mean of the toolkit's own logged tok/s over the
#                            log lines with 50 < step <= 350 (analyze.py's rule)
#
# The run config is made the way scripts/train.sh makes it (same sed), from the
# unmodified ../shared/peers/configs/<toolkit>/<config>.yaml, except that the
# max-steps field (onmt train_steps / joey updates, which train.sh itself
# substitutes for short runs) is set to STEPS (default 360): the run ends by
# itself shortly after update 350 and never reaches the first validation /
# checkpoint at update 400 (valid/save every 400 in both configs). Nothing
# (validation, checkpoint, OpenNMT bucket refill, Joey epoch end) falls inside
# the 50..350 window.
#
# Environment as in scripts/common.sh: 2 threads, no CUDA,
# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1. Run it only while nothing else heavy runs:
# the 1-min load average is sampled every 15 s and reported in the JSON.
#
# Env knobs: PEERS (/root/peers), STEPS (360), CAP_S (hard timeout, 900),
#            OUTDIR (default $PEERS/runs/measure_<toolkit>_<config>; wiped first).
#            With STEPS > 400 the run also writes checkpoints (every 400 updates, outside
#            the 50..350 window), which bench/compare_peers_transformer.sh decodes.
#            Dry runs only (leave unset for a real measurement): W0, W1,
#            ONMT_EXTRA_ARGS.
# Output: one JSON line on stdout; everything else goes to stderr / OUTDIR.
set -uo pipefail
T=${1:?usage: peer_throughput.sh onmt|joeynmt [rnn|transformer]}
C=${2:-rnn}
PEERS=${PEERS:-$HOME/peers}
BENCH=${BENCH:-$(cd "$(dirname "$0")/../../shared/peers" && pwd)}
STEPS=${STEPS:-360}
CAP_S=${CAP_S:-900}
W0=${W0:-50}; W1=${W1:-350}; BATCH=64; TGT_LEN=14.13   # W0/W1 overrides: dry runs only
D=${OUTDIR:-$PEERS/runs/measure_${T}_${C}}
CFG=$BENCH/configs/$T/$C.yaml

export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
export CUDA_VISIBLE_DEVICES=""
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
export PYTHONWARNINGS=ignore

if [ "$STEPS" -le "$W1" ]; then echo "STEPS must be > $W1" >&2; exit 2; fi
rm -rf "$D"; mkdir -p "$D"
case $T in
joeynmt)
  sed -e "s#@PEERS@#$PEERS#g; s#updates: 1000000#updates: $STEPS#; s#model_dir: .*#model_dir: \"$D/model\"#" "$CFG" > "$D/run.yaml"
  grep -q "updates: $STEPS\$" "$D/run.yaml" || { echo "updates substitution failed" >&2; exit 2; }
  CMD=("$PEERS/joeynmt/bin/python" -m joeynmt train "$D/run.yaml" --skip-test) ;;
onmt)
  sed -e "s#train_steps: 1000000#train_steps: $STEPS#; s#@PEERS@/runs/onmt_$C/#$D/#; s#@PEERS@#$PEERS#g" "$CFG" > "$D/run.yaml"
  grep -q "train_steps: $STEPS\$" "$D/run.yaml" || { echo "train_steps substitution failed" >&2; exit 2; }
  # ONMT_EXTRA_ARGS: extra CLI overrides, for smoke/dry runs only (e.g. "-bucket_size 4096")
  CMD=("$PEERS/onmt/bin/onmt_train" -config "$D/run.yaml" ${ONMT_EXTRA_ARGS:-}) ;;
*) echo "unknown toolkit: $T (onmt|joeynmt)" >&2; exit 2 ;;
esac
printf '%q ' "${CMD[@]}" > "$D/cmd.txt"; echo >> "$D/cmd.txt"

load1() { cut -d' ' -f1 /proc/loadavg; }
echo "start $(date '+%F %T') $(load1)" > "$D/load.txt"
( while sleep 15; do echo "during $(date '+%F %T') $(load1)" >> "$D/load.txt"; done ) & SAMPLER=$!
echo "[measure] $T: training $STEPS updates (cap ${CAP_S}s), log $D/train.log" >&2
T_START=$(date +%s.%N)
/usr/bin/time -v -o "$D/time.txt" timeout --signal=TERM "$CAP_S" "${CMD[@]}" > "$D/train.log" 2>&1
RC=$?
T_END=$(date +%s.%N)
kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null
echo "end   $(date '+%F %T') $(load1) rc=$RC" >> "$D/load.txt"

python3 - "$T" "$C" "$D" "$RC" "$W0" "$W1" "$BATCH" "$TGT_LEN" "$T_START" "$T_END" <<'PY'
import json, re, statistics, sys
from datetime import datetime
tk, cfgname, d, rc, w0, w1, batch, L, t_start, t_end = sys.argv[1:]
rc, w0, w1, batch, L = int(rc), int(w0), int(w1), int(batch), float(L)

def ts(s):  # analyze.py's ts()
    for fmt in ("%Y-%m-%d %H:%M:%S,%f", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(s, fmt).timestamp()
        except ValueError:
            pass
    raise ValueError(s)

def step_lines(tk, log):  # analyze.py's step_lines(), joeynmt/onmt branches verbatim
    out = []
    for line in log.splitlines():
        if tk == "joeynmt":
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) - INFO - joeynmt.training - "
                         r"Epoch\s+\d+, Step:\s+(\d+),.*Tokens per Sec:\s+([\d.]+)", line)
            if m:
                out.append((int(m.group(2)), ts(m.group(1)), float(m.group(3))))
        elif tk == "onmt":
            m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) INFO\] Step (\d+)/\s*\d+;.*?"
                         r"(\d+)/\s*(\d+) tok/s", line)
            if m:
                out.append((int(m.group(2)), ts(m.group(1)), float(m.group(4))))
    return out

log = open(f"{d}/train.log", encoding="utf-8", errors="replace").read()
pm = re.search({"joeynmt": r"Total params: (\d+)", "onmt": r"\* number of parameters: (\d+)"}[tk], log)
sl = step_lines(tk, log)
st = {s: (t, own) for s, t, own in sl}
loads = [float(x.split()[3]) for x in open(f"{d}/load.txt") if len(x.split()) >= 4]
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{d}/time.txt").read() or "")
r = {"toolkit": tk, "config": cfgname, "updates_window": [w0, w1]}
if w0 in st and w1 in st:
    sec = st[w1][0] - st[w0][0]
    sps = (w1 - w0) * batch / sec
    own = [o for s, (t, o) in st.items() if w0 < s <= w1]
    r.update({"window_s": round(sec, 3), "sents_per_s": round(sps, 2),
              "tgt_tok_per_s": round(sps * L, 1),
              "own_logged_tok_per_s": round(statistics.mean(own), 1) if own else None})
else:
    r.update({"window_s": None, "sents_per_s": None, "tgt_tok_per_s": None,
              "own_logged_tok_per_s": None,
              "error": f"log lacks update {w0} and/or {w1} (last logged: {sl[-1][0] if sl else None})"})
ss = sorted(sl)
r.update({
    "per50_s": [round(b[1] - a[1], 2) for a, b in zip(ss, ss[1:]) if w0 <= a[0] and b[0] <= w1],
    "params": int(pm.group(1)) if pm else None,
    "last_logged_update": ss[-1][0] if ss else None,
    "train_rc": rc,
    "train_wall_s": round(float(t_end) - float(t_start), 1),
    "peak_rss_mb": round(int(rss.group(1)) / 1024) if rss else None,
    "load1_mean": round(statistics.mean(loads), 2) if loads else None,
    "load1_max": max(loads) if loads else None,
    "log": f"{d}/train.log",
})
print(json.dumps(r))
sys.exit(0 if r["sents_per_s"] is not None else 1)
PY
