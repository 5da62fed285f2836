"""Configuration: strict validation with helpful messages, dotted overrides, YAML round trips."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import toy_raw

from attendo.config import Config, ConfigError, config_from_dict, load_config

_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted([*_CONFIG_DIR.glob("*.yaml"), *_CONFIG_DIR.glob("alignment/*.yaml")])


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_there_are_shipped_configs():
    assert CONFIGS


def test_defaults_with_toy_data_validate():
    cfg = config_from_dict({"data": {"toy": "copy"}})
    assert cfg.model.attention == "additive" and cfg.train.lr == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="data.train_src"):
        config_from_dict({})


@pytest.mark.parametrize(
    "raw,key,suggestion",
    [
        ({"model": {"atention": "dot"}}, "model.atention", "attention"),
        ({"train": {"lr_rate": 1e-3}}, "train.lr_rate", None),
        ({"trian": {"lr": 1e-3}}, "trian", "train"),
        ({"decode": {"beam": 3}}, "decode.beam", "beam_size"),
    ],
)
def test_unknown_key_names_dotted_key_and_close_match(tmp_path, raw, key, suggestion):
    base = toy_raw(tmp_path)
    for section, values in raw.items():
        base.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError) as e:
        config_from_dict(base)
    msg = str(e.value)
    assert msg.startswith(key + ":"), msg
    if suggestion:
        assert f"did you mean '{suggestion}'" in msg
    else:  # nothing close enough: no guess
        assert "did you mean" not in msg
    assert "allowed:" in msg


def test_unknown_key_in_file_names_the_file(tmp_path):
    raw = toy_raw(tmp_path)
    raw["model"]["atention"] = "dot"
    path = write_yaml(tmp_path / "bad.yaml", raw)
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: model\.atention: .*did you mean 'attention'"
    ):
        load_config(path)


@pytest.mark.parametrize(
    "override,pattern",
    [
        ('train.lr="fast"', r"train\.lr: expected a number, got 'fast'"),
        ("train.lr=fast", r"train\.lr: expected a number"),
        ("train.batch_size=3.5", r"train\.batch_size: expected an integer"),
        ("train.batch_size=true", r"train\.batch_size: expected an integer"),
        ("train.progress=maybe", r"train\.progress: expected true or false"),
        ("train.betas=0.9", r"train\.betas: expected a list"),
        ("train.betas=[0.9, x]", r"train\.betas\[1\]: expected a number"),
        ("data.train_src=3", r"data\.train_src: expected a string"),
        ("model=3", r"model: expected a mapping"),
    ],
)
def test_wrong_types(tmp_path, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(toy_raw(tmp_path), [override])


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (["model.dropout=1.5"], r"model\.dropout: must be in \[0, 1\)"),
        (["model.dropout=-0.1"], r"model\.dropout"),
        (["decode.beam_size=2", "decode.n_best=3"], r"decode\.n_best: must be <= beam_size"),
        (["train.lr=0"], r"train\.lr: must be > 0"),
        (["model.emb_dim=0"], r"model\.emb_dim: must be > 0"),
        (["train.label_smoothing=1.0"], r"train\.label_smoothing"),
        (["train.betas=[0.9]"], r"train\.betas"),
        (["train.schedule=inverse_sqrt", "train.warmup_steps=0"], r"train\.warmup_steps"),
        (["model.tie_output=true", "model.out_dim=7"], r"model\.tie_output"),
        (["train.max_steps=-1"], r"train\.max_steps: must be >= 0"),
        (["decode.max_len_ratio=0"], r"decode\.max_len_ratio"),
    ],
)
def test_impossible_values(tmp_path, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(toy_raw(tmp_path), overrides)


def test_tie_output_without_attention_needs_emb_dim_equal_dec_hidden(tmp_path):
    """Without attention the output layer reads the decoder state (dec_hidden=64), so it cannot
    share the 32-wide embedding matrix. build_model raises a ValueError only after the data is
    read and the tokenizers trained (and the CLI shows a traceback); validation should say so."""
    with pytest.raises(ConfigError, match=r"model\.tie_output"):
        config_from_dict(toy_raw(tmp_path), ["model.attention=none", "model.tie_output=true"])
    # equal sizes are fine
    config_from_dict(
        toy_raw(tmp_path), ["model.attention=none", "model.tie_output=true", "model.emb_dim=64"]
    )


@pytest.mark.parametrize("value", [0, 2])
def test_toy_max_len_is_validated(tmp_path, value):
    """Toy sequences are 3..toy_max_len symbols long; a smaller value fails much later as a
    ValueError from the generator instead of a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"data\.toy_max_len"):
        config_from_dict(toy_raw(tmp_path), [f"data.toy_max_len={value}"])


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        (
            "model.attention",
            "foo",
            ["none", "dot", "general", "additive", "scaled_dot", "location"],
        ),
        ("model.rnn_type", "transformer", ["gru", "lstm"]),
        ("data.tokenizer", "spm", ["bpe", "unigram", "word", "char"]),
        ("train.schedule", "cosine", ["constant", "plateau", "inverse_sqrt", "linear"]),
    ],
)
def test_bad_literal_lists_allowed_values(tmp_path, key, value, allowed):
    with pytest.raises(ConfigError) as e:
        config_from_dict(toy_raw(tmp_path), [f"{key}={value}"])
    msg = str(e.value)
    assert msg.startswith(f"{key}: '{value}' is not allowed"), msg
    for option in allowed:
        assert repr(option) in msg


def test_dotted_overrides_apply_and_are_type_checked(tmp_path):
    cfg = config_from_dict(
        toy_raw(tmp_path),
        [
            "train.lr=0.0005",
            "model.attention=dot",
            "train.betas=[0.8, 0.98]",
            "model.bidirectional=false",
            "data.valid_src=",
            "train.max_minutes=2",
        ],
    )
    assert cfg.train.lr == pytest.approx(5e-4)
    assert cfg.model.attention == "dot"
    assert cfg.train.betas == [0.8, 0.98]
    assert cfg.model.bidirectional is False
    assert cfg.data.valid_src == ""
    assert isinstance(cfg.train.max_minutes, float)  # an int is coerced for a float field
    with pytest.raises(ConfigError, match="expected section.key=value"):
        config_from_dict(toy_raw(tmp_path), ["train.lr"])
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key; did you mean 'lr'"):
        config_from_dict(toy_raw(tmp_path), ["train.lrr=0.1"])


@pytest.mark.parametrize("text", ["5e-4", "1e-3", "3E-4", "1.5e-3"])
def test_scientific_notation_is_a_number(tmp_path, text):
    """``train.lr=5e-4`` is the documented override example; PyYAML's YAML 1.1 resolver reads
    "5e-4" (no dot) as a string, so the config layer must still accept it as a float, on the
    command line and in YAML files alike."""
    cfg = config_from_dict(toy_raw(tmp_path), [f"train.lr={text}"])
    assert cfg.train.lr == pytest.approx(float(text))
    path = tmp_path / "sci.yaml"
    path.write_text(f"data: {{toy: copy}}\ntrain: {{lr: {text}}}\n", encoding="utf-8")
    assert load_config(path).train.lr == pytest.approx(float(text))


def test_overrides_do_not_mutate_the_callers_dict(tmp_path):
    """attendo.demo passes its module-level DEMO_CONFIG; overrides must not leak into it."""
    raw = toy_raw(tmp_path)
    before = copy.deepcopy(raw)
    config_from_dict(raw, ["train.max_steps=7", "model.attention=dot", "decode.beam_size=1"])
    assert raw == before


def test_yaml_round_trip(tmp_path):
    cfg = config_from_dict(
        toy_raw(tmp_path),
        [
            "model.attention=location",
            "train.betas=[0.8, 0.9]",
            "train.schedule=linear",
            "decode.length_penalty=0.6",
            "data.lowercase=true",
        ],
    )
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    again = load_config(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"empty\.yaml: data\.train_src"):
        load_config(empty)


def test_overrides_on_load_config(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", toy_raw(tmp_path))
    cfg = load_config(path, ["train.max_steps=7", "model.rnn_type=lstm"])
    assert cfg.train.max_steps == 7 and cfg.model.rnn_type == "lstm"
    # an override's fault is blamed on the override, not on the file (which is fine)
    with pytest.raises(ConfigError, match=r"^command line: model\.dropout=1\.5: must be in"):
        load_config(path, ["model.dropout=1.5"])
