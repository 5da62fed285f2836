"""bench/align_data.py: the alignment benchmark's corpus (tokenised, dev pairs verbatim last)."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(x + "\n" for x in lines))


def test_align_data_tokenises_training_text_and_keeps_gold_pairs_verbatim(tmp_path):
    d = tmp_path / "data"
    for split in ("train", "val", "test_2016_flickr"):
        _gz(d / "multi30k" / f"{split}.de.gz", ["Ein Hund, der läuft.", "Zwei Katzen!"])
        _gz(d / "multi30k" / f"{split}.en.gz", ["A dog that runs.", "Two cats!"])
    # a stray C1 control character (as in the real news data) and a pair that is empty after
    # tokenisation (dropped from both sides)
    _gz(d / "wmt_news_deen" / "train.de.gz", ["\x84Preise stiegen um 2.6 Prozent.", "\x84"])
    _gz(d / "wmt_news_deen" / "train.en.gz", ["Prices rose 2.6 percent.", "x"])
    dev = ["das ist z.B. gut .", "ja"]
    _gz(d / "word_alignment_dev" / "deen_dev.de.gz", dev)
    _gz(d / "word_alignment_dev" / "deen_dev.en.gz", ["that is e.g. good .", "yes"])
    _gz(d / "word_alignment_dev" / "deen_dev.talp.gz", ["1-1 2-2 3p3", "1-1"])
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "align_data.py"), "--shared", str(d),
                        "--out", str(out)], capture_output=True, text=True, check=True)
    info = json.loads(r.stdout)
    assert info["parts"] == {"multi30k": 2, "wmt_news": 1, "dev150": 2}
    de = (out / "train.de").read_text(encoding="utf-8").splitlines()
    en = (out / "train.en").read_text(encoding="utf-8").splitlines()
    assert len(de) == len(en) == 5
    assert de[0] == "Ein Hund , der läuft ." and en[1] == "Two cats !"
    assert de[2] == "Preise stiegen um 2 . 6 Prozent ."  # control character gone
    assert de[3:] == dev  # the gold pairs as given: their links index these words
    assert (out / "dev150.de").read_text(encoding="utf-8").splitlines() == dev
    assert (out / "test.en").read_text(encoding="utf-8").splitlines()[0] == "A dog that runs ."
    with gzip.open(out / "dev150.talp.gz", "rt", encoding="utf-8") as f:
        assert f.read().splitlines() == ["1-1 2-2 3p3", "1-1"]
