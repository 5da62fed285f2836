"""attendo demo: it refuses a folder it did not make, replaces its own earlier run, and says
when its time cap, not the task, ended training."""

from __future__ import annotations

import re

from attendo.cli import main

SMALL = ["data.toy_train_size=300", "data.toy_valid_size=16", "data.toy_test_size=16",
         "model.emb_dim=8", "model.enc_hidden=16", "model.dec_hidden=16", "train.threads=1",
         "train.progress=false", "train.valid_every=10"]


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    assert main(["demo", "--out", str(out), *SMALL, "train.max_steps=2"]) == 2
    assert "holds files the demo did not make" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me\n" and len(list(out.iterdir())) == 1


def test_demo_replaces_its_own_run_and_names_the_time_cap(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SMALL, "train.max_steps=3"]) == 0
    first = capsys.readouterr().out
    assert "time cap" not in first  # it stopped at max_steps: nothing to say
    assert (out / "attention.png").is_file()
    # again into the same folder: replaced, not refused; a cap of ~0 s ends it at once
    assert main(["demo", "--out", str(out), *SMALL, "train.max_minutes=0.0001"]) == 0
    second = capsys.readouterr().out
    assert "replacing the earlier demo run" in second
    assert re.search(r"stopped at its time cap \(train\.max_minutes=0\.0001\) after \d+ of 1500 "
                     r"updates", second), second
