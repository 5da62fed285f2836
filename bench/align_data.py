"""Prepare the German-English corpus of the alignment benchmark (BENCHMARKS.md, "Word alignment").

Training text: Multi30k train + WMT news train (both tokenised here with one regular expression,
``\\w+|[^\\w\\s]``, case kept) + the 150 sentence pairs of ``word_alignment_dev`` *as they are*
(already tokenised; their gold links index these words). Unlabelled test pairs may be in the
training data of an aligner, as for eflomal or GIZA++. Control and format characters are
dropped. The 150 pairs are the last 150 lines.

Validation/test (for BLEU): Multi30k val and test_2016_flickr, tokenised the same way (the
references too, so BLEU compares tokenised text with tokenised text).

    python bench/align_data.py --shared ../shared/data --out runs/align_data

Writes train.{de,en}, val.{de,en}, test.{de,en}, dev150.{de,en}, dev150.talp and prints JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import unicodedata
from pathlib import Path

TOKEN = re.compile(r"\w+|[^\w\s]")


def read(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def tok(line: str) -> str:
    # control and format characters (a few stray ones in the news data) are dropped
    return " ".join(t for t in TOKEN.findall(line) if unicodedata.category(t[0])[0] != "C")


def write(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default="runs/align_data")
    args = ap.parse_args()
    d, out = Path(args.shared), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    de, en = [], []
    counts = {}
    for name, sub in (("multi30k", "multi30k"), ("wmt_news", "wmt_news_deen")):
        sde = [tok(x) for x in read(d / sub / "train.de.gz")]
        sen = [tok(x) for x in read(d / sub / "train.en.gz")]
        keep = [i for i in range(len(sde)) if sde[i] and sen[i]]
        de += [sde[i] for i in keep]
        en += [sen[i] for i in keep]
        counts[name] = len(keep)
    dev = d / "word_alignment_dev"
    dde, den = read(dev / "deen_dev.de.gz"), read(dev / "deen_dev.en.gz")
    de += dde
    en += den
    counts["dev150"] = len(dde)
    write(out / "train.de", de)
    write(out / "train.en", en)
    write(out / "dev150.de", dde)
    write(out / "dev150.en", den)
    shutil.copyfile(dev / "deen_dev.talp.gz", out / "dev150.talp.gz")
    for split, name in (("val", "val"), ("test", "test_2016_flickr")):
        for lang in ("de", "en"):
            write(out / f"{split}.{lang}", [tok(x) for x in read(d / "multi30k" / f"{name}.{lang}.gz")])
    print(json.dumps({"out": str(out), "train_pairs": len(de), "parts": counts}))


if __name__ == "__main__":
    main()
