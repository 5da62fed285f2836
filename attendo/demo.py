"""``attendo demo``: watch an attention model learn, on a generated task.

Training stops at ``train.max_minutes: 2.5`` at the latest (2 threads); BENCHMARKS.md, "Demo",
has fresh-clone runs that trained for 61 s, 80 s and 94 s, and one on a loaded machine that hit
the cap (the demo then says so).

The task is date normalisation ("tuesday, march 3, 1987" -> "1987-03-03"): the model must
reorder (day and year swap places), translate month names to numbers and copy digits,
which it can only do well by attending to the right characters. The heatmap it writes
shows that: each output digit looks at the input characters it comes from.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import config_from_dict
from .data.prepare import load_corpora
from .errors import UsageError
from .train import Trainer, clear_run
from .translator import load
from .viz import plot_attention

DEMO_CONFIG = {
    "data": {"toy": "dates", "tokenizer": "char", "toy_train_size": 20000,
             "toy_valid_size": 300, "toy_test_size": 1000},
    "model": {"emb_dim": 64, "enc_hidden": 128, "dec_hidden": 128, "attention": "additive",
              "attention_style": "bahdanau", "dropout": 0.1},
    "train": {"lr": 0.003, "batch_size": 64, "max_steps": 1500, "max_minutes": 2.5,
              "valid_every": 300, "patience": 2, "valid_max_sents": 300,
              "early_stopping_metric": "bleu", "threads": 2, "log_every": 100},
    "decode": {"beam_size": 1},
}

MARKER = ".attendo-demo"  # in a folder the demo made: running the demo again may replace it
EXAMPLES = ["tuesday, march 3, 1987", "3 Mar. 1987", "the 21st of december, 2012", "09/11/2001"]


def _made_by_demo(out_dir: Path) -> bool:
    """The demo's own folder: its marker, or (made before the marker existed) the heatmap
    beside a config of the dates task."""
    if (out_dir / MARKER).exists():
        return True
    config = out_dir / "config.yaml"
    return ((out_dir / "attention.png").is_file() and config.is_file()
            and "toy: dates" in config.read_text(encoding="utf-8", errors="replace"))


def run_demo(out_dir: str | Path = "runs/demo", overrides: list[str] | None = None) -> float:
    """Train the demo model, print held-out exact match and examples, write a heatmap;
    returns the held-out exact-match accuracy."""
    out_dir = Path(out_dir)
    cfg = config_from_dict(DEMO_CONFIG, [f"train.out_dir={out_dir}", *(overrides or [])])
    if out_dir.exists() and any(out_dir.iterdir()):
        if not _made_by_demo(out_dir):
            raise UsageError(f"{out_dir} holds files the demo did not make; give the demo a "
                             "new folder with --out DIR (or remove that one)")
        print(f"attendo demo: replacing the earlier demo run in {out_dir}")
        clear_run(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("made by attendo demo; running it again replaces this folder\n",
                                  encoding="utf-8")
    t0 = time.time()
    print(f"attendo demo: training an RNN + additive attention model on dates -> ISO ({out_dir})")
    result = Trainer(cfg).run()
    train_s = time.time() - t0
    translator = load(out_dir)
    _, _, test = load_corpora(cfg.data, seed=cfg.train.seed)
    assert test is not None
    correct = sum(h.text == r for h, r in zip(translator.translate(test.src, beam=1), test.tgt))
    acc = correct / len(test)
    print(f"\ntrained in {train_s:.0f} s; held-out exact match: {correct}/{len(test)} = {acc:.1%}")
    if result["reason"].startswith("reached train.max_minutes"):
        print(f"stopped at its time cap (train.max_minutes={cfg.train.max_minutes}) after "
              f"{result['step']} of {cfg.train.max_steps} updates: a busy or slow machine "
              "trains less in that time, and the result shows it; give it longer with "
              f"attendo demo train.max_minutes={max(10, 4 * cfg.train.max_minutes):g}")
    print("\nexamples (greedy):")
    outs = translator.translate(EXAMPLES, beam=1, return_attention=True)
    for src, o in zip(EXAMPLES, outs):
        print(f"  {src:32s} -> {o.text}")
    png = plot_attention(outs[0].attention, outs[0].src_tokens, outs[0].tgt_tokens,
                         out_dir / "attention.png", title=f"{EXAMPLES[0]} -> {outs[0].text}")
    print(f"\nattention heatmap of the first example: {png}")
    print(f"try: attendo translate --model {out_dir} <<< 'may 5th, 1999'")
    return acc
