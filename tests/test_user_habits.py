"""What users of other toolkits bring along: their own tokenizers, configs kept beside their
data, a fast and fully explained command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from attendo.cli import build_parser, main
from attendo.config import load_config
from attendo.data.tokenizers import read_tokenizer_file, sentencepiece_kind
from attendo.errors import UsageError
from attendo.translator import load

SENTS = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song",
         "two cats sat on a wall", "a man reads the paper"] * 8


def _corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        (folder / f"{split}.src").write_text("\n".join(SENTS) + "\n", encoding="utf-8")
        (folder / f"{split}.tgt").write_text("\n".join(s.upper() for s in SENTS) + "\n",
                                             encoding="utf-8")


def _config(path: Path, out: Path, **data) -> Path:
    raw = {"data": {"train_src": "corpus/train.src", "train_tgt": "corpus/train.tgt",
                    "valid_src": "corpus/dev.src", "valid_tgt": "corpus/dev.tgt",
                    "tokenizer": "word", **data},
           "model": {"emb_dim": 16, "enc_hidden": 16, "dec_hidden": 16},
           "train": {"out_dir": str(out), "progress": False, "device": "cpu", "max_steps": 4,
                     "valid_every": 4, "log_every": 4, "batch_size": 8}}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_data_paths_are_read_beside_the_config_when_the_working_directory_has_none(
        tmp_path, monkeypatch):
    project = tmp_path / "project"
    _corpus(project / "corpus")
    cfg_path = _config(project / "run.yaml", tmp_path / "out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no corpus/ here: the config's folder has it
    cfg = load_config(cfg_path)
    assert Path(cfg.data.train_src) == project / "corpus" / "train.src"
    assert Path(cfg.data.valid_tgt) == project / "corpus" / "dev.tgt"
    assert main(["train", str(cfg_path)]) == 0
    # today's behaviour is kept: a path that names a file from the working directory wins
    _corpus(elsewhere / "corpus")
    assert load_config(cfg_path).data.train_src == "corpus/train.src"
    # a path found in neither place stays as written, and training names it
    (project / "run.yaml").write_text((project / "run.yaml").read_text().replace(
        "corpus/train.src", "corpus/missing.src"))
    assert load_config(cfg_path).data.train_src == "corpus/missing.src"


def _sentencepiece_model(path: Path, kind: str) -> Path:
    from attendo.data.tokenizers import SentencePieceTokenizer

    tok = SentencePieceTokenizer.train(SENTS + [s.upper() for s in SENTS], kind, 60)
    path.write_bytes(tok.model)
    return path


def _hf_json(path: Path) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTS + [s.upper() for s in SENTS],
                            trainers.WordPieceTrainer(vocab_size=80, special_tokens=["[UNK]"]))
    tok.save(str(path))
    return path


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_an_existing_sentencepiece_model_is_used_and_stored_with_the_model(tmp_path, kind,
                                                                           monkeypatch):
    _corpus(tmp_path / "corpus")
    spm_file = _sentencepiece_model(tmp_path / "mine.model", kind)
    assert sentencepiece_kind(spm_file.read_bytes()) == kind
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["train", str(_config(tmp_path / "c.yaml", out,
                                      tokenizer_model="mine.model"))]) == 0
    assert (out / "src.spm.model").read_bytes() == spm_file.read_bytes()  # stored, as trained
    assert (out / "tgt.spm.model").read_bytes() == spm_file.read_bytes()  # ones are
    spm_file.unlink()  # the model directory needs nothing from outside
    t = load(out)
    assert t.src.tokenizer.kind == kind
    assert t.translate(["the cat sat"])[0].text is not None


def test_a_hugging_face_tokenizer_json_per_side(tmp_path, monkeypatch):
    _corpus(tmp_path / "corpus")
    hf = _hf_json(tmp_path / "tokenizer.json")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    cfg = _config(tmp_path / "c.yaml", out, joint_vocab=False, tgt_tokenizer_model=str(hf))
    assert main(["train", str(cfg)]) == 0  # source: the word tokenizer trained; target: hf
    assert (out / "tgt.hf.json").read_bytes() == hf.read_bytes()
    assert not (out / "src.hf.json").exists()
    t = load(out)
    assert t.tgt.tokenizer.kind == "hf" and t.src.tokenizer.kind == "word"
    assert t.tgt.tokenizer.encode("THE CAT") == ["THE", "CAT"]
    assert t.tgt.tokenizer.decode(["THE", "CAT"]) == "THE CAT"


def test_bad_tokenizer_files_are_named(tmp_path):
    (tmp_path / "junk.model").write_bytes(b"\x08\x96\x01 not a model")
    with pytest.raises(UsageError, match="junk.model: expected a SentencePiece"):
        read_tokenizer_file(tmp_path / "junk.model")
    (tmp_path / "junk.json").write_text("{}")
    pytest.importorskip("tokenizers")
    with pytest.raises(UsageError, match="junk.json: expected .* Hugging Face"):
        read_tokenizer_file(tmp_path / "junk.json")
    with pytest.raises(UsageError, match="nothing.model"):
        read_tokenizer_file(tmp_path / "nothing.model")
    with pytest.raises(Exception, match="joint_vocab"):
        load_config(_config(tmp_path / "c.yaml", tmp_path / "o", tgt_tokenizer_model="x.json"))


def _actions(parser: argparse.ArgumentParser, path: str = "attendo"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action


def test_every_option_has_help_and_says_its_default():
    """Every option and argument of every subcommand is explained; an option with a default
    that is not None/False says it (argparse's %(default)s or the words 'default ...')."""
    missing, no_default = [], []
    for path, action in _actions(build_parser()):
        name = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{path} {name}")
        elif action.option_strings and action.default not in (None, False, [], ()) \
                and "default" not in action.help and "%(default)" not in action.help:
            no_default.append(f"{path} {name} (default {action.default!r})")
    assert not missing, missing
    assert not no_default, no_default


def test_tensorboard_logs_when_asked(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    _corpus(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["train", str(_config(tmp_path / "c.yaml", out)), "train.tensorboard=true"]) == 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "valid/ppl"} <= set(acc.Tags()["scalars"])
    assert not (tmp_path / "plain").exists()
    assert main(["train", str(_config(tmp_path / "c2.yaml", tmp_path / "plain"))]) == 0
    assert not (tmp_path / "plain" / "tensorboard").exists()  # off unless asked
