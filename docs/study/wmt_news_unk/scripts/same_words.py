"""The same-words table (as the 'word' variant reads them) for extra hypothesis files."""
import gzip
import json
import sys

from attendo import diagnostics as dg
from attendo.data.prepare import load_codecs

src = gzip.open("../shared/data/wmt_news_deen/dev.de.gz", "rt").read().split("\n")[:3000]
ref = gzip.open("../shared/data/wmt_news_deen/dev.en.gz", "rt").read().split("\n")[:3000]
codec, _ = load_codecs("runs/study_wmt_news_unk/models/word", False)
classify = dg.vocab_word_classifier(codec.pieces, codec.vocab, 5, False)
cache = {w: classify(w) for w in {w for s in src for w in s.split()}}
out = {}
for p in sys.argv[1:]:
    hyps = open(p).read().split("\n")[:3000]
    out[p] = dg.rare_word_reproduction(src, ref, hyps, cache.__getitem__)["oov"]
print(json.dumps(out, indent=1))
