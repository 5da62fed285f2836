"""Phase two (coverage added for 300 updates) against its control, for each seed: paired
bootstrap of BLEU on newstest2013, on all sentences and by source length. Run from the
repository root after the phase-two commands of docs/study/wmt_news_long/report.md, with each
model's outputs written by `attendo evaluate ... -o runs/wmt_phase2/NAME.hyp` (NAME: cov,
control, cov_seed2, control_seed2)."""
import gzip
import json

from attendo.study import bootstrap_against_first

src = gzip.open("../shared/data/wmt_news_deen/dev.de.gz", "rt").read().split("\n")[:3000]
ref = gzip.open("../shared/data/wmt_news_deen/dev.en.gz", "rt").read().split("\n")[:3000]
P = "runs/wmt_phase2"
out = {}
for seed, (control, cov) in {"seed 1": ("control", "cov"),
                             "seed 2": ("control_seed2", "cov_seed2")}.items():
    outputs = {n: open(f"{P}/{n}.hyp").read().split("\n")[:3000] for n in (control, cov)}
    b = bootstrap_against_first([{"name": control}, {"name": cov}], outputs, src, ref)[cov]
    out[seed] = [f"{x.get('bucket', 'all')} {x['delta']:+.2f} [{x['low']:+.2f}, {x['high']:+.2f}]"
                 for x in [b["all"], *b["buckets"]]]
print(json.dumps(out, indent=1))
