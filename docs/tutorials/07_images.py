# %% [markdown]
# # 7. Attention over an image: Show, Attend and Tell
#
# Nothing in attention requires the memory to be words. Show, Attend and Tell (Xu et al.
# 2015) and im2markup (Deng et al. 2017) put a convolutional network without fully
# connected layers in the encoder's place: it turns an image into a grid of **region
# vectors**, each the summary of a patch of pixels. Flattened (with a mask for padding),
# the regions are the memory the same decoders attend over, and each output symbol gets a
# distribution a_ij over the regions: where in the picture the decoder looked to write it.
#
# The task: read a string of handwritten digits. `attendo data digits` (here its Python
# function, `attendo.data.images.make_digits`) composes strings from scikit-learn's copy of
# the UCI handwritten digits, each split from its own pool of glyphs, so the test images
# show handwriting the model never saw. The model is the project's `configs/digits.yaml`
# (a CNN, a bidirectional GRU over the columns of the region grid, a GRU decoder with
# additive attention), read with `attendo.config.load_config` and given a smaller task and
# budget by dotted overrides. Here its attention is Show, Attend and Tell's, global over the
# whole image: the overrides below turn off what the config adds for reading long strings
# (a window on the last peak, coverage, no input feeding; see the end).
#
# Needs scikit-learn (`pip install 'attendo[images]'`). Budget: `ATTENDO_TUTORIAL_BUDGET` =
# `tiny` | `default` | `long`; outputs in `ATTENDO_TUTORIAL_OUT` (default
# `runs/tutorials/07_images`). Rendered with its outputs: `python docs/run_tutorials.py 07`.
# Run it from the repository's folder (it reads `configs/digits.yaml`).

# %%
import os
import shutil
import time
from pathlib import Path

from attendo.attend import draw_image_attention
from attendo.config import load_config
from attendo.data.images import make_digits, read_image_tsv
from attendo.evaluate import evaluate
from attendo.train import Trainer
from attendo.translator import load

BUDGET = os.environ.get("ATTENDO_TUTORIAL_BUDGET", "default")
OUT = Path(os.environ.get("ATTENDO_TUTORIAL_OUT", "runs/tutorials/07_images"))
SETTINGS = {  # images per split, digits per string, updates; tiny also shrinks the model
    "tiny": dict(sizes=(60, 10, 10), max_len=3, steps=4, valid_every=4,
                 model=["model.enc_hidden=16", "model.dec_hidden=16", "model.emb_dim=8"]),
    "default": dict(sizes=(4000, 200, 200), max_len=5, steps=800, valid_every=400, model=[]),
    "long": dict(sizes=(6000, 500, 500), max_len=8, steps=8000, valid_every=1000, model=[]),
}
if BUDGET not in SETTINGS:
    raise ValueError(f"ATTENDO_TUTORIAL_BUDGET={BUDGET!r}: expected one of {list(SETTINGS)}")
S = SETTINGS[BUDGET]
OUT.mkdir(parents=True, exist_ok=True)
CONFIG = next((p / "configs/digits.yaml" for p in (Path.cwd(), *Path.cwd().parents)
               if (p / "configs/digits.yaml").is_file()), None)
if CONFIG is None:
    raise FileNotFoundError("configs/digits.yaml not found: run this from the repository")

if "show" not in globals():  # docs/run_tutorials.py provides show(); elsewhere:
    def show(path):
        try:
            from IPython.display import Image, display
            display(Image(filename=str(path)))
        except ImportError:
            print(f"[picture: {path}]")

print(f"budget: {BUDGET}, outputs in {OUT}, config {CONFIG}")

# %% [markdown]
# ## The data
#
# Strings of 1 to a few digits, scaled to the config's image height. Each split is a list
# of `image<TAB>text` lines (the format for your own images too), and
# `test.boxes.jsonl` beside it holds every digit's box, so we can check where the attention
# looked.

# %%
height = load_config(CONFIG).data.image_height
digits = OUT / "digits"
n_train, n_dev, n_test = S["sizes"]
make_digits(digits, n_train=n_train, n_dev=n_dev, n_test=n_test, seed=0, min_len=1,
            max_len=S["max_len"], height=height)
test_images, test_texts, _ = read_image_tsv(digits / "test.tsv")
print(f"{n_train} / {n_dev} / {n_test} images of 1-{S['max_len']} digits, {height} pixels high")
print(f"e.g. {Path(test_images[0]).name}: {test_texts[0]!r}")

# %% [markdown]
# ## The model, briefly trained
#
# `load_config` reads the YAML file and applies the dotted overrides as `attendo train`
# does on its command line: here the data, the output folder and the budget (a number of
# updates instead of the config's minutes).

# %%
out_dir = OUT / "digits_model"
shutil.rmtree(out_dir, ignore_errors=True)
cfg = load_config(CONFIG, [
    f"data.train_src={digits / 'train.tsv'}", f"data.valid_src={digits / 'dev.tsv'}",
    f"data.test_src={digits / 'test.tsv'}", f"train.out_dir={out_dir}",
    f"train.max_steps={S['steps']}", "train.max_minutes=0", f"train.valid_every={S['valid_every']}",
    "train.valid_max_sents=200", "train.patience=0", "train.threads=0", "train.progress=false",
    "train.precision=fp32", *S["model"],
    # global attention, as in Show, Attend and Tell (the config's reader for long strings
    # left its plateau later on these short ones: 26.5% exact match after 800 updates)
    "model.attention_window=0", "model.local=monotonic", "model.coverage=false",
    "model.coverage_window=1", "model.attention_style=bahdanau", "model.input_feeding=true",
])
m = cfg.model
print(f"encoder {m.encoder} ({m.enc_layers} convolutions, {m.image_pool} poolings, "
      f"image_rnn {m.image_rnn}), decoder {m.decoder} with {m.attention} attention")
t = time.time()
result = Trainer(cfg).run()
print(f"{result['step']} updates in {time.time() - t:.0f} s; last validation: "
      f"ppl {result['history'][-1]['ppl']:.2f}")
reader = load(out_dir)

# %% [markdown]
# ## Reading unseen handwriting
#
# `attendo.evaluate.evaluate` is `attendo evaluate --model DIR --src test.tsv`: exact match,
# character error rate (CER), and, with the boxes, how often the attention's peak falls
# inside the box of the digit being written. Look at how often the peak is in the right
# box: the decoder finds each digit in the picture before it writes it.

# %%
report, hyps = evaluate(reader, digits / "test.tsv", None, beam=1)


def share(x) -> str:
    return "-" if x is None else f"{x:.1%}"


loc = report["diagnostics"]["attention"].get("localization") or {}
print(f"exact match {report['exact_match']:.1%}, CER {report['cer']:.1f}%, attention peak in "
      f"the digit's box: {share(loc.get('peak_in_box'))}")
for row in report["by_length"]:
    print(f"  {row['length']} digits: {row['images']:>4} images, exact {row['exact_match']:.1%}, "
          f"CER {row['cer']:.1f}%, peak in box {share(row.get('peak_in_box'))}")
for path, ref, hyp in list(zip(test_images, test_texts, hyps))[:5]:
    print(f"  {Path(path).name}: reference {ref!r}, read {hyp!r}")

# %% [markdown]
# ## Show, Attend and Tell's picture
#
# `attendo.attend.draw_image_attention` (`attendo attend --model DIR IMAGE`) translates an
# image with `return_attention=True` and draws one panel per output symbol: the image as the
# model read it, with that symbol's attention over the regions laid on top (brighter = more
# weight; with this config's column GRU, the regions are columns), for two of the longest
# test strings. Look for the bright band moving left to right, on the digit being written
# at each step, and `</s>` looking at the end of the string.

# %%
longest = sorted(range(len(test_images)), key=lambda i: -len(test_texts[i]))[:2]
for _, png, text in draw_image_attention(reader, [test_images[i] for i in longest], OUT, beam=1):
    print(f"{png.name}: read {text!r}")
    show(png)

# %% [markdown]
# ## What we saw
#
# The decoder is the one of the text tutorials; only the memory changed, from word states to
# image regions, and attention still tells where each output came from. Show, Attend and
# Tell's own options are config keys: `model.context_gate: true` (the gate on the context)
# and `train.coverage_loss_form: doubly_stochastic` (the penalty that asks every region to be
# looked at once over the caption, coverage's loss by another name, tutorial 4). The full
# recipe is `attendo train configs/digits.yaml`; `attendo serve` draws the same picture in
# the browser for an uploaded image. That config's attention may only look near where it
# looked last (`model.local: previous`), sees which columns it has read (coverage), and
# keeps the context out of the recurrent state (`model.input_feeding: false`, Luong style):
# what lets it read strings twice as long as any it was trained on (the "Images" page),
# where the global attention of this tutorial fails.
