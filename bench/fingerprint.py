"""Fingerprint of training and decoding, for proving a refactor changed nothing.

Trains each reference config for a fixed number of updates through the command line (so the
script does not depend on the package's internal layout, which is what a refactor changes),
then decodes the first sentences of its test set with beam 5, and prints one JSON object:
for every config, the SHA-256 of each weight tensor of ``last.safetensors`` (equal hashes of
equal dtype and shape mean ``torch.equal`` tensors) and of the decoded lines, plus the lines.

    python bench/fingerprint.py --out /tmp/before.json               # on the old commit
    python bench/fingerprint.py --out /tmp/after.json                # on the new one
    python bench/fingerprint.py --compare /tmp/before.json /tmp/after.json

Multi30k is read from DATA (laid out by ``attendo data multi30k --out DATA``); with
``--shared DIR`` (e.g. ../shared/data/multi30k) the script lays it out itself.
Same machine, same thread count and same PyTorch on both sides: bit-identity across machines
is not promised.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "toy_dates": ROOT / "configs" / "toy_dates.yaml",
    "multi30k_rnn": ROOT / "configs" / "multi30k_rnn.yaml",
    "multi30k_transformer": ROOT / "configs" / "multi30k_transformer.yaml",
}


def _attendo(*args: str, stdin: str | None = None, cwd: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "attendo", *args], input=stdin, text=True,
                          capture_output=True, cwd=cwd, env=env)
    if done.returncode != 0:
        sys.exit(f"attendo {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _toy_sources(n: int) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from attendo.data.toy import date_task

    return date_task(n, seed=12345)[0]


def fingerprint(name: str, work: Path, steps: int, sents: int, extra: tuple[str, ...] = ()
                ) -> dict:
    import torch
    from safetensors.torch import load_file

    out = work / name
    _attendo("train", str(CONFIGS[name]), f"train.out_dir={out}", f"train.max_steps={steps}",
             "train.max_minutes=0", "train.max_epochs=0", "train.threads=1",
             "train.progress=false", f"train.valid_every={steps}", "train.valid_max_sents=50",
             "train.patience=0", *extra, cwd=work)
    if name == "toy_dates":
        src = _toy_sources(sents)
    else:
        src = (work / "data" / "multi30k" / "test_2016_flickr.de").read_text(
            encoding="utf-8").splitlines()[:sents]
    hyps = _attendo("translate", "--model", str(out), "--beam", "5",
                    stdin="\n".join(src) + "\n", cwd=work).splitlines()
    weights = load_file(out / "last.safetensors")
    return {
        "tensors": {k: hashlib.sha256(v.contiguous().view(-1).view(torch.uint8).numpy()
                                      .tobytes()).hexdigest() for k, v in sorted(weights.items())},
        "outputs_sha256": hashlib.sha256("\n".join(hyps).encode()).hexdigest(),
        "outputs": hyps,
    }


def compare(a_path: str, b_path: str) -> int:
    a, b = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    bad = 0
    for name in sorted(set(a["runs"]) | set(b["runs"])):
        ra, rb = a["runs"].get(name), b["runs"].get(name)
        if ra is None or rb is None:
            print(f"{name}: only in one file")
            bad += 1
            continue
        diff = [k for k in set(ra["tensors"]) | set(rb["tensors"])
                if ra["tensors"].get(k) != rb["tensors"].get(k)]
        same_out = ra["outputs_sha256"] == rb["outputs_sha256"]
        print(f"{name}: {len(ra['tensors'])} tensors, {len(diff)} differ; outputs "
              f"{'identical' if same_out else 'DIFFER'}")
        bad += bool(diff) + (not same_out)
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the JSON here (default: stdout)")
    p.add_argument("--steps", type=int, default=200, help="updates per config (default 200)")
    p.add_argument("--sents", type=int, default=100, help="test sentences decoded (default 100)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--data", help="folder holding data/multi30k (default: a temporary folder)")
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data" / "multi30k"),
                   help="local Multi30k copy to lay out when DATA has none")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more training overrides for every config, e.g. train.precision=fp32 "
                   "on a CPU without bf16 instructions, where bf16 is emulated and slow")
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.data or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if any(n.startswith("multi30k") for n in args.configs) and not (
                work / "data" / "multi30k" / "train.de").exists():
            _attendo("data", "multi30k", "--from", args.shared, "--out",
                     str(work / "data" / "multi30k"), cwd=work)
        import torch

        result = {"torch": torch.__version__, "steps": args.steps, "sents": args.sents,
                  "runs": {n: fingerprint(n, work, args.steps, args.sents, tuple(args.set))
                           for n in args.configs}}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
