# %% [markdown]
# # 6. Self-attention and multiple heads: the Transformer
#
# So far attention connected the decoder to an encoder that was still a recurrent network,
# reading the source one token after another. **Self-attention** uses attention inside
# the encoder and the decoder too: every token is a query over every token of the same
# sequence,
#
#     Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V
#
# with queries, keys and values linear projections of the token vectors (the scaled-dot
# scorer of tutorial 3). **Multiple heads** run several such attentions side by side, each
# with its own projections, and concatenate their outputs, so one layer can look at several
# places for several reasons at once. Stacked with feed-forward layers, residual
# connections and layer normalisation, that is the Transformer (Vaswani et al. 2017); its
# decoder has self-attention over the output so far and cross-attention over the encoder's
# states (the attention of tutorial 2, one per head and layer).
#
# We train a small Transformer on attendo's toy task `reverse` (write 3 to 12 letters
# backwards) and draw every head: the cross-attention of each decoder layer, and the
# self-attention of each encoder layer.
#
# Budget: `ATTENDO_TUTORIAL_BUDGET` = `tiny` | `default` | `long`; outputs in
# `ATTENDO_TUTORIAL_OUT` (default `runs/tutorials/06_transformer`). Rendered with its
# outputs: `python docs/run_tutorials.py 06`.

# %%
import os
import shutil
import time
from pathlib import Path

from attendo.attend import attend, draw_pictures
from attendo.config import config_from_dict
from attendo.data.prepare import load_corpora
from attendo.train import Trainer
from attendo.translator import load

BUDGET = os.environ.get("ATTENDO_TUTORIAL_BUDGET", "default")
OUT = Path(os.environ.get("ATTENDO_TUTORIAL_OUT", "runs/tutorials/06_transformer"))
SETTINGS = {  # training pairs, held-out pairs, model width, updates
    "tiny": dict(n_train=300, n_test=30, d_model=16, ff_dim=32, steps=10, valid_every=10),
    "default": dict(n_train=20000, n_test=500, d_model=64, ff_dim=128, steps=2000,
                    valid_every=500),
    "long": dict(n_train=50000, n_test=1000, d_model=64, ff_dim=128, steps=20000,
                 valid_every=1000),
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
# ## The model
#
# `model.encoder: transformer` and `model.decoder: transformer`, two layers each, four heads
# of d_model / 4 dimensions, sinusoidal positions (self-attention by itself does not know
# the order of the tokens). The learning rate warms up over the first updates, as
# Transformers need.

# %%
out_dir = OUT / "transformer"
shutil.rmtree(out_dir, ignore_errors=True)
cfg = config_from_dict({
    "data": {"toy": "reverse", "toy_max_len": 12, "toy_train_size": S["n_train"],
             "toy_valid_size": 200, "toy_test_size": S["n_test"], "tokenizer": "word"},
    "model": {"encoder": "transformer", "decoder": "transformer", "d_model": S["d_model"],
              "heads": 4, "ff_dim": S["ff_dim"], "enc_layers": 2, "dec_layers": 2,
              "dropout": 0.1, "attn_dropout": 0.0},
    "train": {"out_dir": str(out_dir), "lr": 0.001, "warmup_steps": 100, "batch_size": 64,
              "max_steps": S["steps"], "valid_every": S["valid_every"],
              "valid_max_sents": 200, "progress": False, "threads": 0},
    "decode": {"beam_size": 1},
})
t = time.time()
result = Trainer(cfg).run()
print(f"{result['step']} updates in {time.time() - t:.0f} s; last validation: "
      f"ppl {result['history'][-1]['ppl']:.2f}")
model = load(out_dir)
print(f"{sum(p.numel() for p in model.model.parameters()):,} parameters")

_, _, test = load_corpora(cfg.data, seed=cfg.train.seed)
hyps = [o.text for o in model.translate(test.src, beam=1)]
print(f"held-out exact match: {sum(h == r for h, r in zip(hyps, test.tgt)) / len(test):.1%} "
      f"of {len(test)}")

# %% [markdown]
# ## Every head
#
# `attendo.attend.attend` is what `attendo attend` runs: it translates with
# `return_attention=True` (a Transformer's translation carries every layer's and head's
# cross-attention in `info["attn_heads"]`, shape (output tokens, layers, heads, source
# tokens)) and asks the encoder for its self-attention; `draw_pictures` writes three PNGs
# per sentence:
#
# - `attention-000.png`: "the" attention, the last decoder layer's cross-attention averaged
#   over its heads (`model.attn_layer`), the matrix tutorials 2-5 drew;
# - `attention-000-cross.png`: the cross-attention of every decoder layer (rows) and head
#   (columns);
# - `attention-000-self.png`: the self-attention of every encoder layer and head, source
#   against source.
#
# What to look for: in the cross-attention, reversal shows as an anti-diagonal (output step i
# reads source position n - 1 - i), in some heads sharply, in others spread out or elsewhere:
# heads divide the work, and the average can be sharper or blurrier than any one head. In
# the encoder's self-attention the heads differ from each other too: some keep to the
# diagonal (each token looking at itself), others spread their weight or gather it on a few
# positions.

# %%
texts = [min(test.src, key=lambda s: abs(len(s.split()) - 9))]  # a source of about 9 letters
seen = attend(model, texts)
print(f"source: {texts[0]}\noutput: {seen.outs[0].text}")
print("cross-attention per head:", seen.outs[0].info["attn_heads"].shape,
      "(output tokens, layers, heads, source tokens)")
print("encoder self-attention:", seen.selfs[0].shape, "(layers, heads, source, source)")
for _, paths, _ in draw_pictures(model, texts, seen, OUT):
    for png in paths:
        show(png)

# %% [markdown]
# ## What we saw
#
# A Transformer is attention all the way through: no recurrence, so every position of a
# layer is computed at once, and order comes only from the position encodings. Each head is
# an attention of its own with a heatmap of its own. The command line draws the same
# pictures for any Transformer model: `attendo attend --model DIR "a sentence" --out
# pictures/` (`--layer` and `--head` pick one), and `--html explorer.html` writes an
# interactive page with a selector per layer and head. The last tutorial attends over
# something that is not a sequence of words at all: the regions of an image
# (`07_images.py`).
