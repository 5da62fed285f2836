"""bench/decode_options.py: end to end on two tiny models, one JSON object out."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import train_tiny

ROOT = Path(__file__).resolve().parents[1]


def test_decode_options_reports_every_job_and_keeps_constraints(trained, tmp_path):
    other = train_tiny(tmp_path / "b", attention="general")  # same vocabularies, other weights
    src, ref = tmp_path / "in.txt", tmp_path / "ref.txt"
    src.write_text("a b c\nd e\nc a\n", encoding="utf-8")
    ref.write_text("a b c\nd e\nc a\n", encoding="utf-8")
    out = tmp_path / "hyp"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "decode_options.py"), "--model", str(trained),
         "--model2", str(other), "--src", str(src), "--ref", str(ref), "--beam", "2",
         "--threads", "1", "--repeat", "2", "--out", str(out)],
        capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    info = json.loads(r.stdout)
    assert info["sentences"] == 3
    for job in ("a", "b", "ensemble", "constrained"):
        assert len(info[job]["sents_per_s"]) == 2 and info[job]["sents_per_s_median"] > 0
        assert Path(info["hyps"][job]).read_text(encoding="utf-8").count("\n") == 3
    assert info["ensemble"]["cost_ratio_vs_a"] > 0
    c = info["constrained"]
    assert c["sentences_with_constraint"] == 3
    assert c["contains_constraint_pieces"] == c["contains_constraint_words"] == 1.0
