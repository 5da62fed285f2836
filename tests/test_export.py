"""attendo export: CTranslate2 and ONNX models decode like attendo (token-identical in fp32).

Trained toy models (copy task, seconds each) of every exported family: Transformer pre-norm
with sinusoidal positions and separate embeddings, post-norm with learned positions and one
shared embedding matrix (3 decoder layers), and RNN decoders (GRU Bahdanau, LSTM Luong,
coverage, a Transformer encoder). Needs the optional extra ``attendo[export]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_raw

from attendo.cli import main
from attendo.config import config_from_dict
from attendo.data.toy import toy_task
from attendo.translator import Translator, max_output_lengths

# the optional extra attendo[export] (also in attendo[test]); without it the module is skipped
ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

N_SENTS = 100

TRANSFORMERS = {
    "pre_sinusoidal_separate": dict(norm="pre", positions="sinusoidal", enc_layers=2, dec_layers=2),
    "post_learned_shared": dict(norm="post", positions="learned", enc_layers=1, dec_layers=3,
                                tie_src_tgt=True, tie_output=True),
}
RNNS = {
    "gru_bahdanau": dict(),
    "lstm_luong_2layers": dict(rnn_type="lstm", attention_style="luong", attention="general",
                               dec_layers=2),
    "transformer_enc_coverage": dict(encoder="transformer", coverage=True, d_model=32, heads=2,
                                     ff_dim=64, enc_layers=1),
}


def _train(out: Path, steps: int, **model) -> Path:
    """A copy-task model trained for ``steps`` updates, saved in ``out``."""
    from attendo.train import Trainer

    raw = toy_raw(out)
    raw["data"].update(toy="copy", toy_train_size=1000, toy_valid_size=16, toy_test_size=16,
                       toy_max_len=6)
    raw["model"].update(emb_dim=32, enc_hidden=32, dec_hidden=32, **model)
    raw["train"].update(max_steps=steps, valid_every=steps, log_every=steps, lr=0.005)
    Trainer(config_from_dict(raw)).run()
    return out


def _transformer(out: Path, **kw) -> Path:
    return _train(out, 120, encoder="transformer", decoder="transformer", d_model=32, heads=2,
                  ff_dim=64, dropout=0.0, attn_dropout=0.0, **kw)


@pytest.fixture(scope="module", params=list(TRANSFORMERS))
def transformer_dir(request, tmp_path_factory):
    return _transformer(tmp_path_factory.mktemp(request.param), **TRANSFORMERS[request.param])


@pytest.fixture(scope="module", params=list(RNNS))
def rnn_dir(request, tmp_path_factory):
    return _train(tmp_path_factory.mktemp(request.param), 200, **RNNS[request.param])


def _sources() -> list[str]:
    return toy_task("copy", N_SENTS, seed=11, max_len=6)[0]


def _attendo(tr: Translator, texts: list[str], beam: int) -> list[list[str]]:
    return [[p for p in t.tgt_tokens if p != "</s>"] for t in tr.translate(texts, beam=beam)]


def _export(model_dir: Path, fmt: str, out: Path) -> Path:
    assert main(["export", "--model", str(model_dir), "--format", fmt, "-o", str(out)]) == 0
    return out


def _same(a: list, b: list) -> int:
    return sum(x == y for x, y in zip(a, b))


# --------------------------------------------------------------------------- CTranslate2


def test_ctranslate2_decodes_like_attendo(transformer_dir, tmp_path):
    from attendo.export.ct2 import ct2_translate_pieces

    out = _export(transformer_dir, "ctranslate2", tmp_path / "ct2")
    assert (out / "model.bin").exists() and (out / "src.vocab.json").exists()
    tr = Translator.from_dir(transformer_dir)
    texts = _sources()
    pieces = [tr.src.pieces(t) for t in texts]
    caps = max_output_lengths(torch.tensor([len(p) for p in pieces]), tr.cfg.decode).tolist()
    ct = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    greedy = _attendo(tr, texts, 1)
    assert sum(" ".join(g) == t for g, t in zip(greedy, texts)) > N_SENTS // 5  # it learned something
    assert ct2_translate_pieces(ct, pieces, caps, beam=1) == greedy  # token-identical
    # beam search: attendo stops a sentence once beam_size hypotheses have ended, CTranslate2
    # only when its best hypothesis has; where the outputs differ, CTranslate2's must be the
    # one the model scores higher (never a worse search)
    ours = tr.translate(texts, beam=3)
    scores: list[float] = []
    theirs = ct2_translate_pieces(ct, pieces, caps, beam=3, scores=scores)
    for t, hyp, score in zip(ours, theirs, scores):
        if hyp != [p for p in t.tgt_tokens if p != "</s>"]:
            assert score > t.log_prob - 1e-4
        else:
            assert score == pytest.approx(t.log_prob, abs=1e-4)
    # with decode.stop_rule=exact attendo stops as CTranslate2 does: the same outputs
    tr.cfg.decode.stop_rule = "exact"
    exact = _attendo(tr, texts, 3)
    assert exact == theirs


def test_ctranslate2_int8_export_loads(transformer_dir, tmp_path):
    out = tmp_path / "ct2_int8"
    assert main(["export", "--model", str(transformer_dir), "--format", "ctranslate2",
                 "--quantization", "int8", "-o", str(out)]) == 0
    res = ctranslate2.Translator(str(out), compute_type="int8").translate_batch([["a", "b"]])
    assert isinstance(res[0].hypotheses[0], list)


@pytest.mark.parametrize("overrides, reason", [
    ((), "Transformer decoders only"),  # the default RNN decoder
    (("model.encoder=transformer", "model.decoder=transformer", "model.copy=true"),
     "no pointer-generator"),
    (("model.encoder=transformer", "model.coverage=true"), "Transformer decoders only"),
    (("model.encoder=rnn", "model.decoder=transformer"), "Transformer encoders only"),
    (("model.encoder=transformer", "model.decoder=transformer",
      "model.attention_normalizer=sparsemax"), "softmax only"),
])
def test_ctranslate2_refuses_what_it_cannot_run(overrides, reason, toy_config, tmp_path, capsys):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(toy_config(*overrides).to_yaml())
    code = main(["export", "--model", str(model_dir), "--format", "ctranslate2",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and reason in err and "model." in err
    assert not (tmp_path / "out").exists()


def test_ctranslate2_refuses_coverage_by_name():
    from attendo.export import ExportError
    from attendo.export.ct2 import check_ctranslate2

    cfg = config_from_dict(toy_raw("unused"), ["model.encoder=transformer",
                                               "model.decoder=transformer"])
    cfg.model.coverage = True  # (not a valid Transformer config: checked before the decoder)
    with pytest.raises(ExportError, match="model.coverage"):
        check_ctranslate2(cfg)


# --------------------------------------------------------------------------- ONNX


def _onnx_matches(model_dir: Path, tmp_path: Path) -> None:
    from attendo.export.onnx_decode import OnnxTranslator

    out = _export(model_dir, "onnx", tmp_path / "onnx")
    assert (out / "encoder.onnx").exists() and (out / "decoder_step.onnx").exists()
    tr = Translator.from_dir(model_dir)
    ox = OnnxTranslator(out, threads=1)
    texts = _sources()
    greedy = _attendo(tr, texts, 1)
    assert sum(" ".join(g) == t for g, t in zip(greedy, texts)) > N_SENTS // 5  # it learned something
    assert [o.split() for o in ox.translate(texts, beam=1)] == greedy  # token-identical
    beam = _attendo(tr, texts, 3)
    assert _same([o.split() for o in ox.translate(texts, beam=3, batch_size=7)], beam) >= N_SENTS - 2


def test_onnx_transformer_decodes_like_attendo(transformer_dir, tmp_path):
    _onnx_matches(transformer_dir, tmp_path)


def test_onnx_rnn_decodes_like_attendo(rnn_dir, tmp_path):
    _onnx_matches(rnn_dir, tmp_path)


@pytest.mark.parametrize("decoder", ["transformer", "rnn"])
def test_onnx_step_log_probs_equal_attendo_step(decoder, tmp_path):
    """Every step's log-probabilities, with caches grown over 6 steps and sources of different
    lengths (dynamic batch, source and cache axes), agree with decoder.step to 1e-4."""
    from attendo.export.onnx_decode import OnnxTranslator

    kw = dict(encoder="transformer", decoder="transformer", d_model=32, heads=2, ff_dim=64,
              norm="post") if decoder == "transformer" else dict(rnn_type="lstm")
    model_dir = _train(tmp_path / "m", 2, **kw)
    out = _export(model_dir, "onnx", tmp_path / "onnx")
    tr, ox = Translator.from_dir(model_dir), OnnxTranslator(out, threads=1)
    batch = [[5, 6, 7, 8, 9, 10, 11], [12, 5], [7, 7, 7, 4]]
    source, recurrent = ox.start(batch)
    src = torch.zeros(3, 7, dtype=torch.long)
    for b, x in enumerate(batch):
        src[b, : len(x)] = torch.tensor(x)
    with torch.no_grad():
        state = tr.model.start(src, torch.tensor([len(x) for x in batch]))
        y = np.array([2, 2, 2])
        for t in range(6):
            lp, recurrent = ox._step(y, t, source, recurrent)
            ref, state, _ = tr.model.decoder.step(torch.from_numpy(y), state, need_info=False)
            np.testing.assert_allclose(lp, ref.numpy(), atol=1e-4)
            y = (np.arange(3) + 4 + t).astype(np.int64)


def test_onnx_refuses_copy(toy_config, tmp_path, capsys):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(toy_config("model.copy=true").to_yaml())
    code = main(["export", "--model", str(model_dir), "--format", "onnx", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "model.copy" in err and "source-only words" in err
