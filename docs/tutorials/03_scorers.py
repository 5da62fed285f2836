# %% [markdown]
# # 3. Attention scorers side by side
#
# Attention needs a score e_ij = f(s_i, h_j) of decoder state s_i against encoder state h_j;
# the weights are its softmax over j. The lecture's scorers (Luong et al. 2015, Bahdanau et
# al. 2015, Vaswani et al. 2017) are all one key of attendo's config,
# `model.attention`:
#
# | `model.attention` | score e_ij | |
# |---|---|---|
# | `dot` | s_i · h_j | no parameters of its own |
# | `general` | s_i^T W_a h_j | bilinear (Luong) |
# | `scaled_dot` | s_i · h_j / sqrt(d) | the Transformer's scorer |
# | `additive` | v_a^T tanh(W_1 s_i + W_2 h_j) | a small MLP (Bahdanau, "concat") |
# | `location` | (softmax(W_a s_i))_j | from the decoder state alone: no h_j |
#
# (When encoder and decoder states differ in size, attendo puts a learned linear map on the
# keys for `dot` and `scaled_dot`, which makes them `general` in all but name; here the sizes
# match.)
#
# We train one model per scorer, everything else equal and the same number of updates each,
# on attendo's built-in toy task `reverse` (`data.toy: reverse`): write 3 to 15 letters
# backwards. Then a small table and one heatmap per scorer.
#
# Budget: `ATTENDO_TUTORIAL_BUDGET` = `tiny` | `default` | `long`; outputs in
# `ATTENDO_TUTORIAL_OUT` (default `runs/tutorials/03_scorers`). Rendered with its outputs:
# `python docs/run_tutorials.py 03`.

# %%
import os
import shutil
import time
from pathlib import Path

from attendo.config import config_from_dict
from attendo.data.prepare import load_corpora
from attendo.evaluate import evaluate_texts
from attendo.train import Trainer
from attendo.translator import load
from attendo.viz import plot_attention

BUDGET = os.environ.get("ATTENDO_TUTORIAL_BUDGET", "default")
OUT = Path(os.environ.get("ATTENDO_TUTORIAL_OUT", "runs/tutorials/03_scorers"))
SETTINGS = {  # training pairs, held-out pairs, model size, updates per scorer
    "tiny": dict(n_train=300, n_test=40, emb=16, enc=16, steps=10, valid_every=10),
    "default": dict(n_train=20000, n_test=500, emb=32, enc=64, steps=800, valid_every=400),
    "long": dict(n_train=50000, n_test=1000, emb=32, enc=64, steps=8000, valid_every=1000),
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
# ## One config, five scorers
#
# The base config generates the task itself (`data.toy`, `data.toy_max_len`); the variants
# are dotted overrides of it, `model.attention=...`, the same strings `attendo train` takes
# on its command line.

# %%
BASE = {
    "data": {"toy": "reverse", "toy_max_len": 15, "toy_train_size": S["n_train"],
             "toy_valid_size": 200, "toy_test_size": S["n_test"], "tokenizer": "word"},
    # a bidirectional encoder (2 x enc_hidden) and a decoder of twice enc_hidden: keys and
    # queries have one size, so dot and scaled_dot are plain dot products
    "model": {"rnn_type": "gru", "emb_dim": S["emb"], "enc_hidden": S["enc"],
              "dec_hidden": 2 * S["enc"], "dropout": 0.1},
    "train": {"lr": 0.003, "batch_size": 64, "max_steps": S["steps"],
              "valid_every": S["valid_every"], "valid_max_sents": 200, "progress": False,
              "threads": 0},
    "decode": {"beam_size": 1},
}
SCORERS = ["dot", "general", "scaled_dot", "additive", "location"]

models, seconds = {}, {}
for scorer in SCORERS:
    out_dir = OUT / scorer
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = config_from_dict(BASE, [f"model.attention={scorer}", f"train.out_dir={out_dir}"])
    t = time.time()
    result = Trainer(cfg).run()
    seconds[scorer] = time.time() - t
    models[scorer] = load(out_dir)
    print(f"{scorer:>10}: {result['step']} updates in {seconds[scorer]:.0f} s")

_, _, test = load_corpora(cfg.data, seed=cfg.train.seed)  # the held-out pairs of data.toy
print(f"test set: {len(test)} pairs, e.g. {test.src[0]!r} -> {test.tgt[0]!r}")

# %% [markdown]
# ## The table
#
# `attendo.evaluate.evaluate_texts` translates the test set and scores it (what
# `attendo evaluate` prints): exact match, BLEU, and the attention's entropy as a share of
# a uniform distribution's (0 = every step looks at one source token, 1 = it looks
# everywhere alike). Look at which scorers have learned the task within the same number of
# updates, and how sharp their attention is.

# %%
reports = {s: evaluate_texts(t, test.src, test.tgt, beam=1)[0] for s, t in models.items()}
print(f"{'scorer':>10} {'parameters':>11} {'train s':>8} {'exact match':>12} {'BLEU':>6} "
      f"{'entropy':>8}")
for s, r in reports.items():
    n = sum(p.numel() for p in models[s].model.parameters())
    entropy = r["diagnostics"]["attention"]["entropy_norm"]
    print(f"{s:>10} {n:>11,} {seconds[s]:>8.0f} {r['exact_match']:>12.1%} {r['bleu']:>6.1f} "
          f"{entropy:>8.3f}")

# %% [markdown]
# ## The heatmaps
#
# One test source, each model's attention while it writes its output. Reversal reads the
# source backwards: a model that has learned it looks at the last source letter first, the
# first one last, so its heatmap is an **anti-diagonal**. The `location` scorer never sees
# the encoder states: to look at the right position it has to know, from its own state
# alone, how long the source is and how far it has come.

# %%
example = min(test.src, key=lambda s: abs(len(s.split()) - 12))  # a source of about 12
for scorer, t in models.items():
    out = t.translate([example], beam=1, return_attention=True)[0]
    print(f"{scorer:>10}: {example} -> {out.text}")
    show(plot_attention(out.attention, out.src_tokens, out.tgt_tokens,
                        OUT / f"attention-{scorer}.png", title=f"model.attention={scorer}"))

# %% [markdown]
# ## What we saw
#
# The scorers are interchangeable parts of one model: one key in the config. They differ in
# what they can express (location ignores content, dot products need no parameters, the
# additive scorer is a small network of its own) and in cost. The studies in attendo's
# documentation compare them on real data. Next: what attention still gets wrong, and
# coverage (`04_coverage.py`).
