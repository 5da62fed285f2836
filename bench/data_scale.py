"""Data preparation and training start-up at scale: N = 37k, 370k, 3.7M pairs.

Builds a corpus of N pairs from the shared WMT news data (36,826 pairs), repeated with the
order shuffled and the copy and line number appended so that lines differ, then for each N:

- ``attendo data prepare CONFIG --out DIR``: wall seconds, pairs/s, peak memory (the main
  process's peak RSS, and the peak summed PSS of it and its workers);
- ``attendo train CONFIG data.prepared=DIR`` for ``--steps`` updates of the Multi30k
  Transformer: seconds from the start of the process to the first update (the first line
  of metrics.jsonl, log_every=1), and the peak RSS of the training process.

Prints one JSON object. Memory is polled from /proc every 0.2 s (peak RSS is VmHWM).

    python bench/data_scale.py --sizes 37000 370000 3700000 [--work /tmp/data_scale]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WMT = ROOT.parent / "shared" / "data" / "wmt_news_deen"


def build_corpus(n: int, out: Path) -> tuple[Path, Path]:
    src, tgt = out / f"train{n}.de", out / f"train{n}.en"
    if src.exists() and tgt.exists():
        return src, tgt
    with gzip.open(WMT / "train.de.gz", "rt", encoding="utf-8", newline="\n") as f:
        de = f.read().split("\n")
    with gzip.open(WMT / "train.en.gz", "rt", encoding="utf-8", newline="\n") as f:
        en = f.read().split("\n")
    de, en = de[: len(en) - 1], en[: len(en) - 1]  # the final newline leaves an empty item
    assert len(de) == len(en), (len(de), len(en))
    with open(src, "w", encoding="utf-8") as fs, open(tgt, "w", encoding="utf-8") as ft:
        done, copy = 0, 0
        while done < n:
            order = list(range(len(de)))
            random.Random(copy).shuffle(order)
            for i in order[: n - done]:
                tag = f" {copy}.{i}"
                fs.write(de[i] + tag + "\n")
                ft.write(en[i] + tag + "\n")
            done += min(len(order), n - done)
            copy += 1
    return src, tgt


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _kb(pid: int, path: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict, first_update: Path | None = None) -> dict:
    """Run ``cmd``, polling memory; with ``first_update``, note when that file gets a line."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    hwm = pss_peak = 0
    t_first = None
    while proc.poll() is None:
        hwm = max(hwm, _kb(proc.pid, "status", "VmHWM"))
        tree = [proc.pid, *_children(proc.pid)]
        pss_peak = max(pss_peak, sum(_kb(p, "smaps_rollup", "Pss:") for p in tree))
        if first_update is not None and t_first is None and first_update.exists():
            if first_update.read_text().strip():
                t_first = time.time() - t0
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"seconds": round(time.time() - t0, 1), "peak_rss_mb": round(hwm / 1024),
            "peak_pss_tree_mb": round(pss_peak / 1024),
            "first_update_s": None if t_first is None else round(t_first, 1),
            "stdout": out.strip()[-500:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[37_000, 370_000, 3_700_000])
    ap.add_argument("--work", default="/tmp/attendo_data_scale")
    ap.add_argument("--config", default=str(ROOT / "configs" / "multi30k_transformer.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="for `attendo train`, e.g. train.precision=fp32")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    attendo = [sys.executable, "-m", "attendo"]
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB",
        "threads": env["OMP_NUM_THREADS"],
        "date": datetime.now().isoformat(timespec="minutes"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "runs": [],
    }
    for n in args.sizes:
        t = time.time()
        src, tgt = build_corpus(n, work)
        built = time.time() - t
        raw = yaml.safe_load(Path(args.config).read_text())
        raw["data"].update(train_src=str(src), train_tgt=str(tgt), valid_src="", valid_tgt="",
                           test_src="", test_tgt="", skip_bad_lines=True)
        raw["train"].update(out_dir=str(work / f"run{n}"), max_steps=args.steps, log_every=1,
                            valid_every=10**9, max_minutes=0, progress=False)
        cfg = work / f"config{n}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        prep_dir = work / f"prepared{n}"
        load_before = os.getloadavg()
        prep = run_measured([*attendo, "data", "prepare", str(cfg), "--out", str(prep_dir),
                             "--workers", str(args.workers)], env)
        manifest = json.loads((prep_dir / "manifest.json").read_text())
        metrics = work / f"run{n}" / "metrics.jsonl"
        metrics.unlink(missing_ok=True)
        train = run_measured([*attendo, "train", str(cfg), f"data.prepared={prep_dir}",
                              *args.overrides, "--overwrite"], env, first_update=metrics)
        results["runs"].append({
            "pairs": n,
            "kept_pairs": manifest["pairs"], "skipped": manifest["skipped"],
            "tokens": manifest["tokens"], "corpus_build_s": round(built, 1),
            "prep_s": prep["seconds"], "prep_pairs_per_s": round(n / prep["seconds"]),
            "prep_phases_s": manifest["seconds"], "prep_workers": manifest["workers"],
            "prep_peak_rss_mb": prep["peak_rss_mb"],
            "prep_peak_pss_tree_mb": prep["peak_pss_tree_mb"],
            "prepared_mb": round(sum(f.stat().st_size for f in prep_dir.iterdir()) / 2**20),
            "train_first_update_s": train["first_update_s"],
            "train_s": train["seconds"], "train_steps": args.steps,
            "train_peak_rss_mb": train["peak_rss_mb"],
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        })
        print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
