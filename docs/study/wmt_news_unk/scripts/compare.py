"""bpe+copy (seed 1, 1424 updates) against bpe: seed 1 at 2253 updates, seed 2 at 1250/1500."""
import gzip
import json

from attendo.metrics import bleu_stats, paired_bootstrap

ref = gzip.open("../shared/data/wmt_news_deen/dev.en.gz", "rt").read().split("\n")[:3000]
def hyps(p): return open(p).read().split("\n")[:3000]
b = hyps("runs/study_wmt_news_unk/models/bpe+copy/study_test.hyp")
sb = bleu_stats(b, ref)
out = {}
for name, p in [("bpe seed1 2253", "runs/study_wmt_news_long_38min/models/additive/study_test.hyp"),
                ("bpe seed2 1250", "runs/unk_matched/bpe_s2_1250.hyp"),
                ("bpe seed2 1500", "runs/unk_matched/bpe_s2_1500.hyp")]:
    try:
        a = hyps(p)
    except FileNotFoundError:
        continue
    out[name + " -> bpe+copy"] = paired_bootstrap(bleu_stats(a, ref), sb)
print(json.dumps(out, indent=1))
