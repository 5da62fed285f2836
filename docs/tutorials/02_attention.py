# %% [markdown]
# # 2. Attention
#
# The first tutorial squeezed the source through one fixed-size state. Attention lets the
# decoder look at *every* encoder state at every step. At decoder step i:
#
# - scores e_ij = f(s_i, h_j), one per source position j (here the additive scorer of
#   Bahdanau et al. 2015, f = v_a^T tanh(W_1 s_i + W_2 h_j));
# - weights a_ij = exp(e_ij) / sum_j' exp(e_ij'): a distribution over the source;
# - context c_i = sum_j a_ij h_j, a summary of the source made for this step;
# - P(y_i | ...) = softmax(W [c_i; s_i]).
#
# The state no longer has to carry the whole source: at each step the decoder fetches what
# it needs. We train the same encoder-decoder as in tutorial 1, on the same task (copy 3 to 25
# symbols), with and without attention, with the same budget, and compare them by source
# length. Then we draw the weights a_ij as a heatmap.
#
# Budget: `ATTENDO_TUTORIAL_BUDGET` = `tiny` | `default` | `long`; outputs in
# `ATTENDO_TUTORIAL_OUT` (default `runs/tutorials/02_attention`). Rendered with its outputs:
# `python docs/run_tutorials.py 02`.

# %%
import os
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # pictures are written to files (and shown with show())
import matplotlib.pyplot as plt

from attendo import diagnostics
from attendo.config import config_from_dict
from attendo.data.toy import split_toy, toy_task
from attendo.train import Trainer
from attendo.translator import load
from attendo.viz import plot_attention

BUDGET = os.environ.get("ATTENDO_TUTORIAL_BUDGET", "default")
OUT = Path(os.environ.get("ATTENDO_TUTORIAL_OUT", "runs/tutorials/02_attention"))
SETTINGS = {  # training pairs, held-out pairs, model size, updates (the same for both models)
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
# ## The task and the two models
#
# The data of tutorial 1 (the same generator and seed): copy 3 to 25 symbols from `s0` to
# `s29`.
# The two configs differ in one key, `model.attention`: `none`, or `additive` with
# `model.attention_style: bahdanau` (the decoder attends with its previous state s_{i-1}
# and feeds the context into its next step).

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


models = {
    "no attention": train(config("no_attention", attention="none")),
    "additive attention": train(config("additive", attention="additive",
                                       attention_style="bahdanau")),
}

# %% [markdown]
# ## Accuracy by source length
#
# Exact matches on the held-out test set, by source length, for both models. Look at the
# long sources: there the model without attention falls behind, and the attention model
# keeps up, since its decoder reads the source again at every step instead of remembering
# it.

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


hyps = {name: [o.text for o in t.translate(test_src, beam=1)] for name, t in models.items()}
table = {name: by_length(test_src, h, test_ref) for name, h in hyps.items()}
print(f"{'source length':>13} {'sentences':>10}" + "".join(f"{n:>20}" for n in models))
for k, (label, n, _) in enumerate(table["no attention"]):
    print(f"{label:>13} {n:>10}" + "".join(f"{table[m][k][2]:>20.1%}" for m in models))

fig, ax = plt.subplots(figsize=(5.5, 3.2))
for name, rows in table.items():
    ax.plot([r[0] for r in rows], [r[2] for r in rows], marker="o", label=name)
ax.set(xlabel="source length (symbols)", ylabel="exact match", ylim=(-0.02, 1.02),
       title="copying, with and without attention")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "exact_match_by_length.png", dpi=100)
plt.close(fig)
show(OUT / "exact_match_by_length.png")

# %% [markdown]
# attendo's own diagnostic of the same thing is BLEU by source length, in buckets of ten
# words (Bahdanau et al. 2015, figure 2; `attendo evaluate` prints it):

# %%
for name, h in hyps.items():
    buckets = [b for b in diagnostics.bleu_by_length(test_src, h, test_ref) if b["sentences"]]
    print(f"{name:>20}   " + "   ".join(f"{b['bucket']} words: BLEU {b['bleu']:5.1f}"
                                       for b in buckets))

# %% [markdown]
# ## Seeing attention
#
# `Translator.translate(..., return_attention=True)` returns each output's weights a_ij,
# one row per output token (the last for `</s>`), one column per source token;
# `attendo.viz.plot_attention` draws them (the command line does the same:
# `attendo attend --model runs/tutorials/02_attention/additive "s1 s2 s3" --out pictures/`).
# Look for a bright diagonal: to write its i-th symbol, the decoder looks at the i-th
# source symbol, and at little else.

# %%
attn_model = models["additive attention"]
example = max(test_src, key=lambda s: len(s.split()))  # the longest test source
out = attn_model.translate([example], beam=1, return_attention=True)[0]
print(f"source: {example}\noutput: {out.text}\nattention: {out.attention.shape} "
      "(output tokens incl. </s>, source tokens)")
png = plot_attention(out.attention, out.src_tokens, out.tgt_tokens, OUT / "attention.png",
                     title="additive attention, copying")
show(png)

# %% [markdown]
# ## What we saw
#
# With attention the fixed-size bottleneck is gone: the decoder chooses, step by step, where
# in the source to look, and the heatmap shows where it chose. Additive is one of several
# ways to score s_i against h_j; the next tutorial (`03_scorers.py`) puts the others beside
# it.
