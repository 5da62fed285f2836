"""Second seeds against the first seed's baselines: bootstrap by length bucket."""
import gzip
import json

from attendo.study import bootstrap_against_first

src = gzip.open("../shared/data/wmt_news_deen/dev.de.gz", "rt").read().split("\n")[:3000]
ref = gzip.open("../shared/data/wmt_news_deen/dev.en.gz", "rt").read().split("\n")[:3000]
def h(p): return open(p).read().split("\n")[:3000]
L, U = "runs/study_wmt_news_long_38min", "runs/study_wmt_news_unk"
sets = {
  "long": {"none": f"{L}/models/none/study_test.hyp", "additive s1": f"{L}/models/additive/study_test.hyp",
           "additive s2": f"{L}_seed2/models/additive/study_test.hyp"},
  "unk": {"word": f"{U}/models/word/study_test.hyp", "word+copy s1": f"{U}/models/word+copy/study_test.hyp",
          "word+copy s2": f"{U}_seed2/models/word+copy/study_test.hyp"},
}
out = {}
for k, files in sets.items():
    outputs = {n: h(p) for n, p in files.items()}
    b = bootstrap_against_first([{"name": n} for n in files], outputs, src, ref)
    out[k] = {n: [f"{x['bucket'] if 'bucket' in x else 'all'} {x['delta']:+.2f} [{x['low']:+.2f}, {x['high']:+.2f}] p={x['p']:.3f}"
                  for x in [v["all"], *v["buckets"]]] for n, v in b.items()}
print(json.dumps(out, indent=1))
