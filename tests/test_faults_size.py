"""Sizes are checked before allocation, model directories are self-contained, overrides are
blamed as overrides (issue 29: every promise in Guarantees holds under attack).

Each absurd input here (a billion-wide layer, a million layers, a model larger than the memory)
used to be a traceback, an allocator failure or minutes of building; through ``attendo.cli.main``
each is now one error line and exit code 2. The size check works by formula (at most four
``meta`` builds of one- and two-layer stacks), so none of these tests can be slow unless the
check is gone, and then the address-space cap turns the regression into a quick failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import toy_raw
from test_faults_model import address_space_cap, fails

import attendo.model.seq2seq as seq2seq
import attendo.model.size as size
from attendo.checkpoint import ModelFileError
from attendo.cli import main
from attendo.config import ConfigError, ModelConfig, load_config
from attendo.config.sections import MAX_LAYERS
from attendo.data.prepare import load_codecs
from attendo.model.size import available_memory, check_model_size, estimate_size


def edit_config(model: Path, **changes) -> Path:
    path = model / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["model"].update(changes)
    path.write_text(yaml.safe_dump(raw))
    return path


def entry_points(model: Path, text: Path, tmp_path: Path) -> dict[str, list[object]]:
    """Every command that loads a model directory, as argv."""
    return {
        "translate": ["translate", "--model", model, "-i", text],
        "evaluate": ["evaluate", "--model", model, "--src", text, "--ref", text],
        "train --resume": ["train", "--resume", model],
        "average": ["average", "--model", model, "--last", "1",
                    "--output", tmp_path / "avg.safetensors"],
        "attend": ["attend", "--model", model, "a b"],
        "align": ["align", "--model", model, "--src", text, "--tgt", text],
        "serve": ["serve", "--model", model, "--port", "0"],
        "export": ["export", "--model", model, "--format", "onnx", "--output", tmp_path / "x"],
    }


# --------------------------------------------------------------------------- the estimate


GRID = [
    dict(enc_layers=3, dec_layers=2),
    dict(rnn_type="lstm", bidirectional=False, bridge=False, input_feeding=False,
         attention="location", attention_style="luong", enc_layers=2, dec_layers=3),
    dict(coverage=True, copy=True, dec_layers=2),
    dict(attention_window=2, local="predictive", attention_style="luong"),
    dict(tie_output=True, attention="general", enc_layers=2),
    dict(attention="none", emb_dim=10, dec_hidden=10, tie_output=True),
    dict(encoder="cnn", enc_layers=3, dec_layers=2),
    dict(encoder="transformer", decoder="transformer", enc_layers=3, dec_layers=2, attn_layer=1,
         positions="learned", tie_output=True, tie_src_tgt=True),
    dict(encoder="transformer", decoder="rnn", enc_layers=2, dec_layers=2, norm="post"),
    dict(encoder="cnn", decoder="transformer", enc_layers=2, dec_layers=3, copy=True,
         attention_normalizer="entmax15"),
]


@pytest.mark.parametrize("changes", GRID, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_estimate_equals_the_built_model(changes):
    """The estimate (one- and two-layer meta builds, extrapolated) is exact: parameters
    (tied ones once), their bytes, and the bytes of unstored buffers (sinusoidal tables)."""
    small = dict(emb_dim=10, enc_hidden=12, dec_hidden=14, d_model=16, heads=2, ff_dim=24,
                 max_positions=64, location_max_len=32)
    cfg = ModelConfig(**{**small, **changes})
    cfg.validate()
    vocab = (37, 37) if cfg.tie_src_tgt else (37, 41)
    model = seq2seq.assemble_model(cfg, *vocab)
    params = list(model.parameters())
    got = estimate_size(cfg, *vocab)
    assert got.params == sum(p.numel() for p in params)
    assert got.param_bytes == sum(p.numel() * p.element_size() for p in params)
    assert got.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())


def test_the_estimate_never_builds_the_configured_depth(monkeypatch):
    """However deep the config, the estimate builds at most four small models."""
    built: list[tuple[int, int]] = []
    real = size.assemble_model

    def counting(cfg, *args, **kwargs):
        built.append((cfg.enc_layers, cfg.dec_layers))
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(size, "assemble_model", counting)
    cfg = ModelConfig(emb_dim=8, enc_hidden=8, dec_hidden=8, enc_layers=MAX_LAYERS,
                      dec_layers=MAX_LAYERS)
    got = estimate_size(cfg, 30, 30)
    assert len(built) == 4 and max(max(b) for b in built) == 2
    one = estimate_size(ModelConfig(emb_dim=8, enc_hidden=8, dec_hidden=8), 30, 30)
    assert got.params > 500 * one.params  # it did extrapolate


@pytest.mark.parametrize("key, value", [("enc_layers", 10**6), ("dec_layers", 100_000),
                                        ("enc_layers", MAX_LAYERS + 1)])
def test_absurd_layer_counts_are_config_errors(key, value):
    cfg = ModelConfig(**{key: value})
    with pytest.raises(ConfigError, match=rf"^model\.{key}: {value:,} layers is more than"):
        cfg.validate()


@pytest.mark.parametrize("changes", [dict(enc_hidden=10**9), dict(enc_hidden=10**30),
                                     dict(encoder="transformer", d_model=2**40, heads=1)])
def test_overflowing_sizes_name_the_key(changes):
    """These were RuntimeError/TypeError tracebacks from torch ("Storage size calculation
    overflowed"), even on the meta device."""
    key = "enc_hidden" if "enc_hidden" in changes else "d_model"
    with pytest.raises(ConfigError, match=rf"^model\.{key}={changes[key]}: a tensor of this "
                                          "model would have more bytes than 64 bits"):
        check_model_size(ModelConfig(**changes), 100, 100, device="meta")


# --------------------------------------------------------------------------- memory


def _cap(monkeypatch, limit: int) -> None:
    monkeypatch.setattr(size, "available_memory", lambda device=None: (limit, "a test limit"))


def test_decoding_needs_one_copy_and_training_four(monkeypatch, model, text, capsys):
    """With memory for 2x the weights the model translates, but --resume (weights, gradients
    and two Adam moments) is refused, naming the estimate and the limit."""
    src, tgt = load_codecs(model)
    need = estimate_size(load_config(model / "config.yaml").model, len(src.vocab),
                         len(tgt.vocab))
    _cap(monkeypatch, 2 * need.param_bytes + need.buffer_bytes)
    assert main(["translate", "--model", str(model), "-i", str(text)]) == 0
    capsys.readouterr()
    line = fails(capsys, "train", "--resume", model)
    assert "training needs about" in line and "a test limit" in line


def test_training_too_big_for_memory_is_refused_before_any_file(monkeypatch, tmp_path, capsys):
    """`train model.enc_hidden=100000` under a 4 GB limit was an allocator traceback after the
    tokenizers were trained; now it is refused first, naming the key."""
    _cap(monkeypatch, 4 * 10**9)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(toy_raw(tmp_path / "run")))
    line = fails(capsys, "train", cfg, "model.enc_hidden=100000")
    assert "model.enc_hidden=100000: the model has at least" in line
    assert "more than the 4.0 GB available (a test limit)" in line
    assert not (tmp_path / "run" / "src.vocab.json").exists()


@pytest.mark.parametrize("where", ["config.yaml", "override"])
def test_too_big_for_memory_at_every_entry_point(monkeypatch, model, text, tmp_path, capsys,
                                                 where):
    """model.enc_hidden: 100000 (240 GB of weights) fits no test machine's limit here."""
    _cap(monkeypatch, 4 * 10**9)
    if where == "override":
        line = fails(capsys, "train", "--resume", model, "model.enc_hidden=100000")
        assert "model.enc_hidden=100000: " in line and "GB" in line
        return
    cfg = edit_config(model, enc_hidden=100_000)
    for name, argv in entry_points(model, text, tmp_path).items():
        line = fails(capsys, *argv)
        assert "model.enc_hidden=100000: the model has " in line, (name, line)
        if name != "train --resume":  # the trainer checks before it reads the directory
            assert f"error: {cfg}: " in line, (name, line)


def test_available_memory_reads_the_address_space_limit():
    with address_space_cap(extra=1 << 30):
        have, source = available_memory()
    assert 0 < have <= (1 << 30) + (64 << 20), (have, source)
    assert "ulimit -v" in source


def test_available_memory_reads_cgroup_limits(monkeypatch, tmp_path):
    """cgroup v2 (memory.max, the smallest of the group and its ancestors) and v1
    (memory.limit_in_bytes, with its near-2**63 "no limit")."""
    proc = tmp_path / "cgroup"
    v2 = tmp_path / "sys"
    (v2 / "a" / "b").mkdir(parents=True)
    (v2 / "a" / "memory.max").write_text("3000000000\n")
    (v2 / "a" / "b" / "memory.max").write_text("max\n")
    proc.write_text("0::/a/b\n")
    assert size._cgroup_limit(proc, v2) == 3_000_000_000
    v1 = v2 / "memory"
    (v1 / "job").mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "job" / "memory.limit_in_bytes").write_text("2000000000\n")
    proc.write_text("4:memory:/job\n1:cpu:/\n")
    assert size._cgroup_limit(proc, v2) == 2_000_000_000
    proc.write_text("4:memory:/\n")
    assert size._cgroup_limit(proc, v2) is None


def test_cuda_training_is_checked_against_the_device_memory(monkeypatch):
    """On CUDA the model is built in CPU memory (one copy) and trained in the device's (four);
    here a pretend device holds two copies of the weights: decoding fits, training does not."""
    cfg = ModelConfig(emb_dim=16, enc_hidden=32, dec_hidden=32)
    need = estimate_size(cfg, 50, 50)

    class Props:
        total_memory = 2 * need.param_bytes + need.buffer_bytes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    assert check_model_size(cfg, 50, 50, device="cuda") == need
    with pytest.raises(ConfigError, match=r"training needs .* available \(the memory of cuda:0\)"):
        check_model_size(cfg, 50, 50, training=True, device="cuda")
    with pytest.raises(ConfigError, match=r"'cuda:3': no such device"):
        check_model_size(cfg, 50, 50, device="cuda:3")
    # the same training on the CPU is checked against the CPU's memory only
    assert check_model_size(cfg, 50, 50, training=True, device="cpu") == need


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_a_device_is_a_config_error():
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        check_model_size(ModelConfig(), 50, 50, device="cuda")


# --------------------------------------------------------------------------- edited config.yaml


@pytest.mark.parametrize("changes, shown", [
    (dict(enc_hidden=10**9), "model.enc_hidden=1000000000: a tensor of this model would have"),
    (dict(enc_layers=10**6), "model.enc_layers: 1,000,000 layers is more than the 1,000"),
    (dict(enc_layers=100_000), "model.enc_layers: 100,000 layers is more than the 1,000"),
])
def test_absurd_config_yaml_at_every_entry_point(model, text, tmp_path, capsys, changes, shown):
    """translate, evaluate, serve, --resume (and the rest) with an edited config.yaml: an
    overflow traceback, or no answer within minutes, before."""
    cfg = edit_config(model, **changes)
    with address_space_cap():
        for name, argv in entry_points(model, text, tmp_path).items():
            line = fails(capsys, *argv)
            assert shown in line, (name, line)
            if "layers" in shown or name != "train --resume":  # the trainer names the key only
                assert f"error: {cfg}: {shown}" in line, (name, line)


@pytest.mark.parametrize("override, shown", [
    ("model.enc_hidden=1000000000", "model.enc_hidden=1000000000: a tensor of this model"),
    ("model.enc_layers=1000000", "command line: model.enc_layers=1000000: 1,000,000 layers"),
])
def test_absurd_override_with_resume(model, capsys, override, shown):
    with address_space_cap():
        line = fails(capsys, "train", "--resume", model, override)
    assert shown in line
    assert "enc_layers: 1\n" in (model / "config.yaml").read_text()  # not saved


# --------------------------------------------------------------------------- links leading out


@pytest.mark.parametrize("name", ["src.vocab.json", "tgt.vocab.json", "src.tokenizer.json",
                                  "config.yaml", "model.safetensors"])
def test_model_files_linked_from_elsewhere_are_refused(model, text, tmp_path, capsys, name):
    """src.vocab.json as a symlink to a file outside the model directory was followed and
    read (tokenizer files were refused in the same case)."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(model / name, outside / name)
    (model / name).symlink_to(outside / name)
    for argv in (["translate", "--model", model, "-i", text], ["train", "--resume", model]):
        line = fails(capsys, *argv)
        assert f"error: {model / name}: " in line and "outside the model directory" in line
    with pytest.raises(ModelFileError, match="outside the model directory"):
        load_codecs(model) if name.startswith(("src", "tgt")) else _raise_outside(model, name)


def _raise_outside(model: Path, name: str) -> None:
    from attendo.checkpoint import check_model_dir

    check_model_dir(model)


@pytest.mark.parametrize("name", ["last.safetensors", "checkpoints", "metrics.jsonl"])
def test_training_files_linked_from_elsewhere(model, text, tmp_path, capsys, name):
    """What only training reads or writes is refused by --resume (and by average, for the
    checkpoints); translating, which does not read them, still works."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(model / name, outside / name)
    (model / name).symlink_to(outside / name)
    line = fails(capsys, "train", "--resume", model)
    assert f"error: {model / name}: " in line and "outside the model directory" in line
    if name == "checkpoints":
        line = fails(capsys, "average", "--model", model, "--last", "1")
        assert f"error: {model / name}: " in line
    assert main(["translate", "--model", str(model), "-i", str(text)]) == 0


def test_a_link_inside_the_model_directory_is_fine(model, text, tmp_path, capsys):
    """A file linked to another file of the directory, and a link to the whole directory
    (runs/latest -> runs/2024-05-01), are fine."""
    os.rename(model / "src.vocab.json", model / "src.vocab.orig.json")
    (model / "src.vocab.json").symlink_to("src.vocab.orig.json")
    assert main(["translate", "--model", str(model), "-i", str(text)]) == 0
    (tmp_path / "latest").symlink_to(model)
    assert main(["translate", "--model", str(tmp_path / "latest"), "-i", str(text)]) == 0


def test_fine_tuning_from_a_directory_with_a_link_out(model, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(model / "tgt.vocab.json", outside / "tgt.vocab.json")
    (model / "tgt.vocab.json").symlink_to(outside / "tgt.vocab.json")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(toy_raw(tmp_path / "run")))
    line = fails(capsys, "train", cfg, f"train.init_from={model}")
    assert f"train.init_from: {model / 'tgt.vocab.json'}: " in line


# --------------------------------------------------------------------------- overrides blamed


@pytest.mark.parametrize("override, shown", [
    ("train.lr=.inf", "command line: train.lr=.inf: must be a finite number, got inf"),
    ("train.lrr=1", "command line: train.lrr=1: unknown key; did you mean 'lr'?"),
    ("train.betas=[0.9,", "command line: train.betas=[0.9,: the value is not valid YAML"),
    ("model.x.y=1", "command line: model.x.y=1: model.x: unknown key"),
    ("decode.n_best=9", "command line: decode.n_best=9: must be <= beam_size"),
])
def test_an_override_is_blamed_as_an_override(tmp_path, capsys, override, shown):
    """These named the YAML file, which was fine."""
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(toy_raw(tmp_path / "run")))
    line = fails(capsys, "train", cfg, override)
    assert shown in line and str(cfg) not in line


def test_the_file_is_blamed_for_its_own_errors(tmp_path):
    raw = toy_raw(tmp_path / "run")
    raw["train"]["lrr"] = 1
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"^{cfg}: train\.lrr: unknown key; did you mean"):
        load_config(cfg, ["train.max_steps=5"])


def test_a_file_and_overrides_that_clash_are_blamed_together(tmp_path):
    """n_best: 2 in the file is fine with its beam_size 2; decode.beam_size=1 given on the
    command line makes it wrong: neither alone is at fault."""
    raw = toy_raw(tmp_path / "run")
    raw["decode"].update(beam_size=2, n_best=2)
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"^{cfg} with the command line decode\.beam_size=1: "
                                          r"decode\.n_best: must be <= beam_size \(1\)"):
        load_config(cfg, ["decode.beam_size=1"])


def test_overrides_into_an_empty_section(tmp_path):
    """`decode:` with nothing under it is an empty section, which an override may fill (it
    was "decode is not a section")."""
    raw = toy_raw(tmp_path / "run")
    raw["decode"] = None
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert load_config(cfg, ["decode.beam_size=3"]).decode.beam_size == 3
