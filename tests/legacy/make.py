"""Makes the model directories in this folder: tiny models trained by an older attendo, kept
so that tests/test_legacy_models.py can show that the current code loads them and decodes
exactly what the older code decoded (a refactor must not change a saved model's behaviour).

Run from a checkout of the older commit, which ``made_by.txt`` names:

    git worktree add /tmp/old COMMIT && cd /tmp/old
    python /path/to/tests/legacy/make.py /path/to/tests/legacy

Each model trains 60 updates of the reverse task on one thread (a few seconds) through the
command line, then translates ``inputs.txt`` with greedy search and with beam 5 (n-best 3 with scores,
``i ||| text ||| score``), the printed lines kept in ``expected.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

MODELS = {
    "rnn_additive_coverage": {"rnn_type": "gru", "attention": "additive", "coverage": True,
                              "input_feeding": True, "attention_style": "bahdanau"},
    "rnn_copy_general": {"rnn_type": "lstm", "attention": "general", "copy": True,
                         "attention_style": "luong"},
    "transformer": {"encoder": "transformer", "decoder": "transformer", "d_model": 32,
                    "heads": 2, "ff_dim": 64, "enc_layers": 2, "dec_layers": 2},
    "cnn_rnn": {"encoder": "cnn", "attention": "dot"},
}
INPUTS = ["a b c d", "e d c b a", "b b a", "c", "d a e b c a"]


def main(out_root: str) -> None:
    root = Path(out_root).resolve()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path.cwd()))
    (root / "inputs.txt").write_text("\n".join(INPUTS) + "\n", encoding="utf-8")
    expected = {}
    for name, model in MODELS.items():
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        cfg = {
            "data": {"toy": "reverse", "tokenizer": "word", "toy_train_size": 600,
                     "toy_valid_size": 16, "toy_test_size": 16, "toy_max_len": 6},
            "model": {"emb_dim": 16, "enc_hidden": 32, "dec_hidden": 32, "dropout": 0.1, **model},
            "train": {"out_dir": str(out), "progress": False, "threads": 1, "batch_size": 16,
                      "lr": 0.003, "max_steps": 60, "valid_every": 60, "log_every": 60,
                      "valid_max_sents": 16, "keep_last": 1, "seed": 5},
        }
        cfg_path = root / f"{name}.train.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        subprocess.run([sys.executable, "-m", "attendo", "train", str(cfg_path)], env=env,
                       check=True, capture_output=True)
        cfg_path.unlink()
        # keep only what loading and translating needs
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        for junk in ("last.safetensors", "metrics.jsonl", "train.log", ".attendo.lock"):
            (out / junk).unlink(missing_ok=True)
        runs = {}
        for beam in (1, 5):
            done = subprocess.run(
                [sys.executable, "-m", "attendo", "translate", "--model", str(out), "--beam",
                 str(beam), "--n-best", "3" if beam > 1 else "1"],
                input="\n".join(INPUTS) + "\n", text=True, env=env, check=True,
                capture_output=True)
            runs[f"beam{beam}"] = done.stdout.splitlines()
        expected[name] = runs
    (root / "expected.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    (root / "made_by.txt").write_text(f"attendo commit {commit.strip()}\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
