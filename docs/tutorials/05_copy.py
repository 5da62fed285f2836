# %% [markdown]
# # 5. Copying unknown words: the pointer-generator
#
# A decoder writes words from its output vocabulary, so a word that is not in it (a name,
# a number, anything too rare to keep) can only come out as `<unk>`: the third failure of
# tutorial 1, and attention alone does not fix it. The pointer-generator (See et al. 2017;
# Gu et al. 2016) lets the decoder **copy** from the source instead:
#
# - p_gen = sigmoid(w_c·c_i + w_s·s_i + w_y·y_{i-1} + b), the probability of generating
#   from the vocabulary rather than copying;
# - P(w) = p_gen P_vocab(w) + (1 - p_gen) sum_{j: x_j = w} a_ij: the attention weights
#   double as a distribution over source positions to copy from;
# - the vocabulary is extended, per sentence, with the source's out-of-vocabulary words, so
#   an unknown source word can be produced verbatim (`model.copy: true`).
#
# The task is a toy "translation": the source mixes common words (the letters `a` to `t`,
# translated to upper case, `a` -> `A`) with **names**, made-up words of three syllables
# that are copied unchanged. Names are drawn from hundreds of thousands, so almost every
# one is rare in training; the vocabulary keeps only words seen at least 5 times
# (`data.min_freq: 5`), and the names of the test sentences are new. We train the same
# attention model with and without `model.copy`, with the same budget.
#
# Budget: `ATTENDO_TUTORIAL_BUDGET` = `tiny` | `default` | `long`; outputs in
# `ATTENDO_TUTORIAL_OUT` (default `runs/tutorials/05_copy`). Rendered with its outputs:
# `python docs/run_tutorials.py 05`.

# %%
import os
import random
import shutil
import time
from pathlib import Path

from attendo.config import config_from_dict
from attendo.evaluate import evaluate_texts
from attendo.train import Trainer
from attendo.translator import load
from attendo.viz import draw_translation

BUDGET = os.environ.get("ATTENDO_TUTORIAL_BUDGET", "default")
OUT = Path(os.environ.get("ATTENDO_TUTORIAL_OUT", "runs/tutorials/05_copy"))
SETTINGS = {  # training pairs, held-out pairs, model size, updates (the same for both models)
    "tiny": dict(n_train=300, n_test=30, emb=16, hidden=32, steps=10, valid_every=10),
    "default": dict(n_train=20000, n_test=500, emb=64, hidden=128, steps=800, valid_every=400),
    "long": dict(n_train=50000, n_test=1000, emb=64, hidden=128, steps=8000, valid_every=1000),
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
# ## The data
#
# 4 to 12 words a sentence, each a name with probability 0.3. The test set is generated with
# another seed, so its names are new.

# %%
COMMON = "abcdefghijklmnopqrst"
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = [("".join(rng.choices(SYLLABLES, k=3)) if rng.random() < 0.3
                  else rng.choice(COMMON)) for _ in range(rng.randint(4, 12))]
        src.append(" ".join(words))
        tgt.append(" ".join(w.upper() if w in COMMON else w for w in words))
    return src, tgt


data = OUT / "data"
data.mkdir(exist_ok=True)
splits = {"train": pairs(S["n_train"], 1), "valid": pairs(200, 2), "test": pairs(S["n_test"], 3)}
for name, (s, t) in splits.items():
    (data / f"{name}.src").write_text("\n".join(s) + "\n", encoding="utf-8")
    (data / f"{name}.tgt").write_text("\n".join(t) + "\n", encoding="utf-8")
test_src, test_ref = splits["test"]
for s, t in zip(test_src[:3], test_ref[:3]):
    print(f"{s}  ->  {t}")

# %% [markdown]
# ## Two models
#
# Both: a bidirectional GRU encoder, a GRU decoder with additive attention, a word
# vocabulary (one for both sides) of the words seen at least 5 times. The second adds
# `model.copy: true`.

# %%
def config(name: str, copy: bool):
    return config_from_dict({
        "data": {"train_src": str(data / "train.src"), "train_tgt": str(data / "train.tgt"),
                 "valid_src": str(data / "valid.src"), "valid_tgt": str(data / "valid.tgt"),
                 "tokenizer": "word", "min_freq": 5},
        "model": {"rnn_type": "gru", "emb_dim": S["emb"], "enc_hidden": S["hidden"],
                  "dec_hidden": S["hidden"], "attention": "additive", "dropout": 0.1,
                  "copy": copy},
        "train": {"out_dir": str(OUT / name), "lr": 0.003, "batch_size": 64,
                  "max_steps": S["steps"], "valid_every": S["valid_every"],
                  "valid_max_sents": 200, "progress": False, "threads": 0},
        "decode": {"beam_size": 1},
    })


models = {}
for name, copy in (("attention", False), ("attention + copy", True)):
    cfg = config(name.replace(" + ", "_"), copy)
    shutil.rmtree(cfg.train.out_dir, ignore_errors=True)
    t = time.time()
    result = Trainer(cfg).run()
    print(f"{name}: {result['step']} updates in {time.time() - t:.0f} s")
    models[name] = load(cfg.train.out_dir)
vocab = models["attention"].tgt.vocab
print(f"vocabulary: {len(vocab)} entries, e.g. {vocab.itos[4:12]}")

# %% [markdown]
# ## Unknown words, measured
#
# `attendo.evaluate.evaluate_texts` (what `attendo evaluate` runs) reports, among its
# diagnostics, the source words the vocabulary cannot encode (*oov*) that appear in the
# reference, and the share of them the output reproduces; the share of output tokens that
# are `<unk>`; and, for a copy model, the mean p_gen. Look at the oov row: the model without
# copy cannot write a single unseen name and writes `<unk>` instead; the copy model
# reproduces them.

# %%
print(f"{'':18}{'exact':>8}{'oov words reproduced':>24}{'<unk> in output':>17}{'p_gen':>7}")
reports = {}
for name, t in models.items():
    r, _ = evaluate_texts(t, test_src, test_ref, beam=1)
    d = r["diagnostics"]
    oov = d["rare_words"]["oov"]
    p_gen = "-" if d.get("p_gen") is None else f"{d['p_gen']:.2f}"
    share = "-" if oov["share"] is None else f"{oov['share']:.1f}%"
    print(f"{name:18}{r['exact_match']:>8.1%}{oov['reproduced']:>10} of {oov['in_ref']:<5}"
          f"{share:>7}{d['unk_rate']:>16.1f}%{p_gen:>7}")
print()
for s in test_src[:3]:
    print(f"source:            {s}")
    for name, t in models.items():
        print(f"{name + ':':19}{t.translate([s], beam=1)[0].text}")
    print()

# %% [markdown]
# ## Seeing the switch
#
# `attendo.viz.draw_translation` draws a translation's attention and, for a copy model,
# p_gen per output token in a strip beside it (1 = generated from the vocabulary, 0 =
# copied from the source). Look for p_gen dropping at the names, where the attention row is
# the copy distribution, and staying high at the translated letters. The model without copy
# has no strip, and `<unk>` rows where the names should be.

# %%
example = max(test_src[:50], key=lambda s: sum(w not in COMMON for w in s.split()))
for name, t in models.items():
    out = t.translate([example], beam=1, return_attention=True)[0]
    if out.p_gen is not None:
        print("p_gen per output token:",
              " ".join(f"{w}={p:.2f}" for w, p in zip(out.tgt_tokens, out.p_gen)))
    for png in draw_translation(out, OUT, f"attention-{name.replace(' + ', '_')}",
                                title=f"{name}: {out.text}"):
        show(png)

# %% [markdown]
# ## What we saw
#
# Copying turns attention into a pointer: where p_gen is low, the word comes from the
# source position the decoder attends to, whether or not the vocabulary has it. That is
# what names and numbers need, and why pointer-generators are the standard for
# summarisation. With subword vocabularies (BPE) few words are unknown, but rare words still
# come out in pieces the model rarely saw; `model.copy` works with subwords too. Next:
# attention without recurrence, the Transformer (`06_transformer.py`).
