# %% [markdown]
# # 1. The encoder-decoder without attention
#
# An encoder reads the source x_1..x_n into states h_1..h_n; a decoder with state s_i
# predicts P(y_i | x, y_<i) = softmax(W s_i). Without attention the decoder starts from the
# encoder's final state and never looks at the source again: **the whole source has to
# squeeze through one fixed-size state**. The lecture names three failures that follow:
#
# 1. it gets worse as inputs get longer (a fixed-size state holds only so much);
# 2. it repeats itself (it loses track of what it has already produced);
# 3. it cannot produce a word it never learned to embed: an unknown word comes out as
#    `<unk>`, or as some other word, never as itself.
#
# This tutorial shows all three on a generated task small enough to train in a few minutes
# on a laptop CPU: **copy a sequence of symbols**. The task could not be simpler for a
# person, and it is exactly the job of the fixed-size state: remember the whole source.
#
# Run it as a notebook (Jupyter with jupytext, or VS Code), as a script, or rendered with its
# outputs: `python docs/run_tutorials.py 01`. The budget comes from the environment variable
# `ATTENDO_TUTORIAL_BUDGET`: `tiny` (seconds: a smoke test, the model learns nothing),
# `default` (a few minutes) or `long` (about ten times longer). Models and pictures go to
# `ATTENDO_TUTORIAL_OUT` (default `runs/tutorials/01_no_attention`).

# %%
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # pictures are written to files (and shown with show())
import matplotlib.pyplot as plt

from attendo import diagnostics
from attendo.config import config_from_dict
from attendo.data.toy import split_toy, toy_task
from attendo.train import Trainer
from attendo.translator import load

BUDGET = os.environ.get("ATTENDO_TUTORIAL_BUDGET", "default")
OUT = Path(os.environ.get("ATTENDO_TUTORIAL_OUT", "runs/tutorials/01_no_attention"))
SETTINGS = {  # training pairs, held-out pairs, model size, updates
    "tiny": dict(n_train=400, n_test=60, emb=16, hidden=32, steps=20, valid_every=20),
    "default": dict(n_train=20000, n_test=1000, emb=64, hidden=128, steps=1500, valid_every=500),
    "long": dict(n_train=50000, n_test=1000, emb=64, hidden=128, steps=15000, valid_every=1000),
}
if BUDGET not in SETTINGS:
    raise ValueError(f"ATTENDO_TUTORIAL_BUDGET={BUDGET!r}: expected one of {list(SETTINGS)}")
S = SETTINGS[BUDGET]
OUT.mkdir(parents=True, exist_ok=True)

if "show" not in globals():  # docs/run_tutorials.py provides show(); elsewhere:
    def show(path):
        try:
            from IPython.display import Image, display
            display(Image(filename=str(path)))
        except ImportError:
            print(f"[picture: {path}]")

print(f"budget: {BUDGET}, outputs in {OUT}")

# %% [markdown]
# ## The task
#
# Sources are 3 to 25 symbols drawn from an alphabet of 30 (`s0` to `s29`); the target is
# the same sequence. attendo's toy generator (`attendo.data.toy`) makes the pairs;
# `split_toy` holds out valid and test pairs whose sources never occur in training. We
# write them as plain text files, one sentence a line, as you would your own data.

# %%
MAX_LEN, SYMBOLS = 25, 30
src, tgt = toy_task("copy", S["n_train"] + 200 + S["n_test"], seed=1, max_len=MAX_LEN,
                    n_symbols=SYMBOLS)
splits = dict(zip(("train", "valid", "test"), split_toy(src, tgt, 200, S["n_test"])))
data = OUT / "data"
data.mkdir(exist_ok=True)
for name, (s, t) in splits.items():
    (data / f"{name}.src").write_text("\n".join(s) + "\n", encoding="utf-8")
    (data / f"{name}.tgt").write_text("\n".join(t) + "\n", encoding="utf-8")
test_src, test_ref = splits["test"]
print({name: len(s) for name, (s, _) in splits.items()}, "pairs")
for s in splits["train"][0][:3]:
    print(" ", s)

# %% [markdown]
# ## The model
#
# A bidirectional GRU encoder and a GRU decoder, `model.attention: none`. The bridge
# (`model.bridge: true`, the default) initialises the decoder from the encoder's final
# states: that one vector is all the decoder ever learns about the source. The `word`
# tokenizer makes each symbol one token.

# %%
def config(name: str, **model):
    return config_from_dict({
        "data": {"train_src": str(data / "train.src"), "train_tgt": str(data / "train.tgt"),
                 "valid_src": str(data / "valid.src"), "valid_tgt": str(data / "valid.tgt"),
                 "tokenizer": "word"},
        "model": {"rnn_type": "gru", "emb_dim": S["emb"], "enc_hidden": S["hidden"],
                  "dec_hidden": S["hidden"], "dropout": 0.1, **model},
        "train": {"out_dir": str(OUT / name), "lr": 0.003, "batch_size": 64,
                  "max_steps": S["steps"], "valid_every": S["valid_every"],
                  "valid_max_sents": 200, "progress": False, "threads": 0},
        "decode": {"beam_size": 1},
    })


def train(cfg):
    """Train from scratch into cfg.train.out_dir; returns the trained model's Translator."""
    shutil.rmtree(cfg.train.out_dir, ignore_errors=True)
    t = time.time()
    result = Trainer(cfg).run()
    print(f"{cfg.train.out_dir}: {result['step']} updates in {time.time() - t:.0f} s "
          f"({result['reason']}); last validation: ppl {result['history'][-1]['ppl']:.2f}")
    return load(cfg.train.out_dir)


plain = train(config("no_attention", attention="none"))
print(f"{sum(p.numel() for p in plain.model.parameters()):,} parameters")

# %% [markdown]
# ## Failure 1: longer inputs, worse outputs
#
# We decode the held-out test set greedily and count exact matches by source length. Look at
# how the share falls from the short sources to the long ones: every symbol more is
# information the final state has to carry.

# %%
EDGES = [5, 10, 15, 20, 25]  # buckets of source length: 3-5, 6-10, ..., 21-25


def by_length(srcs, hyps, refs):
    """[(bucket label, sentences, exact-match share)] by source length."""
    rows, lo = [], 1
    for hi in EDGES:
        idx = [i for i, s in enumerate(srcs) if lo <= len(s.split()) <= hi]
        acc = sum(hyps[i] == refs[i] for i in idx) / max(len(idx), 1)
        rows.append((f"{max(lo, 3)}-{hi}", len(idx), acc))
        lo = hi + 1
    return rows


plain_out = plain.translate(test_src, beam=1)
plain_hyps = [o.text for o in plain_out]
rows = by_length(test_src, plain_hyps, test_ref)
print("source length   sentences   exact match")
for label, n, acc in rows:
    print(f"{label:>13}   {n:>9}   {acc:>10.1%}")

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.plot([r[0] for r in rows], [r[2] for r in rows], marker="o", label="no attention")
ax.set(xlabel="source length (symbols)", ylabel="exact match", ylim=(-0.02, 1.02),
       title="copying without attention")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "exact_match_by_length.png", dpi=100)
plt.close(fig)
show(OUT / "exact_match_by_length.png")

# %% [markdown]
# ## Failure 2: it repeats itself
#
# A copy holds each source symbol exactly as often as the source does. So we can count, per
# output, the tokens that write a symbol **again**, more often than the source has it, and
# the source symbols that **never** come out. Look at both columns grow with the source
# length, from near zero on short sources: the decoder loses track of what it has already
# written, writes some symbols again and leaves others out. In the examples, brackets mark
# the tokens written again.

# %%
def again_and_never(src: str, out: str) -> tuple[int, int]:
    """(output tokens beyond the source's count of their symbol, source tokens never output)"""
    have, wrote = Counter(src.split()), Counter(out.split())
    return (sum(max(0, n - have[w]) for w, n in wrote.items()),
            sum(max(0, n - wrote[w]) for w, n in have.items()))


def mark_again(src: str, out: str) -> str:
    left, words = Counter(src.split()), []
    for w in out.split():
        words.append(w if left[w] > 0 else f"[{w}]")
        left[w] -= 1
    return " ".join(words)


print("source length   written again (% of output)   never written (% of source)")
lo = 1
for hi in EDGES:
    idx = [i for i, s in enumerate(test_src) if lo <= len(s.split()) <= hi]
    counts = [again_and_never(test_src[i], plain_hyps[i]) for i in idx]
    again, never = sum(a for a, _ in counts), sum(n for _, n in counts)
    n_out = sum(len(plain_hyps[i].split()) for i in idx)
    n_src = sum(len(test_src[i].split()) for i in idx)
    print(f"{max(lo, 3):>6}-{hi:<6}   {again / max(n_out, 1):>27.1%}   "
          f"{never / max(n_src, 1):>27.1%}")
    lo = hi + 1
long_idx = [i for i, s in enumerate(test_src) if len(s.split()) > 15]
repeating = [i for i in long_idx if again_and_never(test_src[i], plain_hyps[i])[0]]
print()
for i in (repeating or long_idx)[:3]:  # long sources whose output writes a symbol again
    print(f"source: {test_src[i]}\noutput: {mark_again(test_src[i], plain_hyps[i])}\n")

# %% [markdown]
# attendo's repetition diagnostic, `attendo.diagnostics.repetition` (what `attendo evaluate`
# reports; See et al. 2017, figure 4), needs no source: the share of each output's n-grams
# that repeat an earlier n-gram of the same output, beside the same share in the references.
# Random symbols repeat only by chance, so the reference rows are the baseline; on the long
# sources the output rows lie above them.

# %%
print("duplicate n-grams, % of n-grams within each sentence")
print(f"{'':28}" + "".join(f"{'n=' + n:>8}" for n in "1234"))
for name, idx in (("all sources", range(len(test_src))), ("sources over 15", long_idx)):
    for side, texts in (("output", plain_hyps), ("reference", test_ref)):
        rep = diagnostics.repetition(texts[i].split() for i in idx)
        print(f"{name + ', ' + side:28}"
              + "".join(f"{'-' if v is None else f'{v:.2f}':>8}" for v in rep.values()))

# %% [markdown]
# ## Failure 3: an unknown symbol cannot come out
#
# The vocabulary is built from the training data, so it holds `s0` to `s29` and the special
# tokens. Give the model a source with `s42`, `s77` or `s31`: the encoder reads `<unk>` in
# its place, and the decoder can only choose among the words it has output embeddings for, so
# the unknown symbol never comes out as itself.

# %%
vocab = plain.src.vocab
print("s42, s77, s31 in the vocabulary:", [s in vocab.stoi for s in ("s42", "s77", "s31")])
for text in ["s1 s2 s42 s3 s4", "s10 s11 s12 s77 s13", "s5 s31 s6 s7"]:
    seen = [vocab.itos[i] for i in vocab.encode(plain.src.pieces(text))]
    out = plain.translate([text], beam=1)[0]
    print(f"source:       {text}\nthe encoder:  {' '.join(seen)}\noutput:       {out.text}\n")

# %% [markdown]
# ## What we saw
#
# One fixed-size state between encoder and decoder: accuracy that falls with length,
# repeated stretches on long inputs, and no way to produce a symbol outside the
# vocabulary. The next tutorial gives the decoder a look at every encoder state at every
# step: **attention** (`02_attention.py`). Coverage (`04_coverage.py`) addresses repetition
# and the copy mechanism (`05_copy.py`) unknown words.
