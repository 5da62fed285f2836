# %% [markdown]
# # 4. Coverage against repetition
#
# Attention decides at every step where to look, but nothing stops it from looking at the
# same source position again. When it does, the decoder writes that part of the source a
# second time (**repetition**, over-translation), and what it skipped never comes out
# (under-translation). Coverage (Tu et al. 2016; See et al. 2017) gives the attention a
# memory of where it has already looked:
#
# - the coverage vector cov_i = sum_{i'<i} a_i' is the attention received so far by each
#   source position;
# - it enters the scorer: e_ij = v^T tanh(W_s s_i + W_h h_j + w_c cov_ij)
#   (`model.coverage: true`);
# - a loss lambda * sum_j min(a_ij, cov_ij) penalises attending again to what is already
#   covered (`train.coverage_loss: lambda`).
#
# The task: copy 3 to 40 letters from a small alphabet (`a` to `h`). Long sources over few
# letters repeat short stretches ("... c a f ... c a f ..."), which is exactly where an
# attention that matches content can jump back to the earlier stretch. We train the same
# attention model with and without coverage, with the same budget, and measure repetition
# with `attendo.diagnostics.repetition`: the share of each output's n-grams that repeat an
# earlier n-gram of the same output, beside the same share in the references.
#
# Budget: `ATTENDO_TUTORIAL_BUDGET` = `tiny` | `default` | `long`; outputs in
# `ATTENDO_TUTORIAL_OUT` (default `runs/tutorials/04_coverage`). Rendered with its outputs:
# `python docs/run_tutorials.py 04`.

# %%
import os
import shutil
import time
from pathlib import Path

import numpy as np

from attendo import diagnostics
from attendo.config import config_from_dict
from attendo.data.toy import split_toy, toy_task
from attendo.train import Trainer
from attendo.translator import load
from attendo.viz import plot_attention

BUDGET = os.environ.get("ATTENDO_TUTORIAL_BUDGET", "default")
OUT = Path(os.environ.get("ATTENDO_TUTORIAL_OUT", "runs/tutorials/04_coverage"))
SETTINGS = {  # training pairs, held-out pairs, model size, updates (the same for both models)
    "tiny": dict(n_train=300, n_test=40, emb=16, hidden=32, steps=10, valid_every=10),
    "default": dict(n_train=20000, n_test=400, emb=64, hidden=128, steps=500, valid_every=250),
    "long": dict(n_train=50000, n_test=1000, emb=64, hidden=128, steps=5000, valid_every=1000),
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
# ## Data and the two models
#
# Both models: a bidirectional GRU encoder, a GRU decoder with additive attention. The
# second adds `model.coverage: true` and `train.coverage_loss: 1` (See et al.'s lambda).

# %%
src, tgt = toy_task("copy", S["n_train"] + 200 + S["n_test"], seed=1, max_len=40, n_symbols=8)
splits = dict(zip(("train", "valid", "test"), split_toy(src, tgt, 200, S["n_test"])))
data = OUT / "data"
data.mkdir(exist_ok=True)
for name, (s, t) in splits.items():
    (data / f"{name}.src").write_text("\n".join(s) + "\n", encoding="utf-8")
    (data / f"{name}.tgt").write_text("\n".join(t) + "\n", encoding="utf-8")
test_src, test_ref = splits["test"]
print(f"e.g. {test_src[0]!r}")


def config(name: str, coverage: bool):
    return config_from_dict({
        "data": {"train_src": str(data / "train.src"), "train_tgt": str(data / "train.tgt"),
                 "valid_src": str(data / "valid.src"), "valid_tgt": str(data / "valid.tgt"),
                 "tokenizer": "word"},
        "model": {"rnn_type": "gru", "emb_dim": S["emb"], "enc_hidden": S["hidden"],
                  "dec_hidden": S["hidden"], "attention": "additive", "dropout": 0.1,
                  "coverage": coverage},
        "train": {"out_dir": str(OUT / name), "lr": 0.003, "batch_size": 64,
                  "max_steps": S["steps"], "valid_every": S["valid_every"],
                  "valid_max_sents": 200, "progress": False, "threads": 0,
                  "coverage_loss": 1.0 if coverage else 0.0},
        "decode": {"beam_size": 1},
    })


models = {}
for name, coverage in (("attention", False), ("attention + coverage", True)):
    cfg = config(name.replace(" + ", "_"), coverage)
    shutil.rmtree(cfg.train.out_dir, ignore_errors=True)
    t = time.time()
    result = Trainer(cfg).run()
    print(f"{name}: {result['step']} updates in {time.time() - t:.0f} s")
    models[name] = load(cfg.train.out_dir)

# %% [markdown]
# ## Repetition, measured
#
# Greedy translations of the held-out test set. For each model: exact match, the length of
# the outputs against the references' (repetition makes outputs longer), and the duplicate
# n-gram shares, with the references' row as the baseline a perfect copy would have. Look
# at the n = 3 and n = 4 columns: the model without coverage repeats stretches that the
# references do not, and coverage brings its outputs close to the reference row.

# %%
outs = {name: t.translate(test_src, beam=1, return_attention=True) for name, t in models.items()}
ref_words = sum(len(r.split()) for r in test_ref)
print(f"{'':22}{'exact':>7}{'length':>8}" + "".join(f"{'n=' + n:>8}" for n in "1234"))
for name, o in [*outs.items(), ("reference", None)]:
    texts = test_ref if o is None else [x.text for x in o]
    rep = diagnostics.repetition(t.split() for t in texts)
    exact = sum(h == r for h, r in zip(texts, test_ref)) / len(test_ref)
    ratio = sum(len(t.split()) for t in texts) / ref_words
    print(f"{name:22}{exact:>7.1%}{ratio:>8.2f}"
          + "".join(f"{'-' if v is None else f'{v:.2f}':>8}" for v in rep.values()))

# %% [markdown]
# ## Seeing it
#
# One long test source where the model without coverage repeats itself. Under each heatmap,
# the strip sums each source position's attention over the whole output: 1.0 is "looked at
# once". Without coverage, look for rows that jump back to positions already read and for
# sums well above 1 (read twice) or near 0 (skipped); with coverage the sums stay close to 1
# and the diagonal does not jump back. For the model without coverage we compute the same
# running sum from its attention, so both pictures have the strip.

# %%
def repeats(text: str) -> int:
    return diagnostics.duplicate_ngrams(text.split(), 4)[0]


plain = outs["attention"]
long = sorted(range(len(test_src)), key=lambda i: -len(test_src[i].split()))
pick = next((i for i in long if repeats(plain[i].text) > repeats(test_ref[i])), long[0])
for name, o in outs.items():
    t = o[pick]
    # coverage before each step (what the coverage model carries in its state)
    cov = t.coverage if t.coverage is not None else np.cumsum(t.attention, 0) - t.attention
    print(f"{name}:\n  source: {test_src[pick]}\n  output: {t.text}")
    show(plot_attention(t.attention, t.src_tokens, t.tgt_tokens,
                        OUT / f"attention-{name.replace(' + ', '_')}.png",
                        title=name, coverage=cov))

# %% [markdown]
# ## What we saw
#
# Coverage gives the scorer what plain attention lacks, a record of where it has already
# looked, and the loss makes looking twice cost something. At decoding time there are two
# related knobs for any attention model, trained with coverage or not:
# `decode.coverage_penalty` (GNMT's penalty on source words left uncovered) and
# `decode.block_ngram_repeat` (forbid repeating an n-gram), e.g.
# `attendo translate --model DIR decode.block_ngram_repeat=3`. The next failure of the
# lecture is unknown words: the copy mechanism (`05_copy.py`).
