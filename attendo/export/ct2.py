"""attendo Transformer -> CTranslate2, through CTranslate2's own model-spec API.

The mapping (attendo's module names on the left, see :mod:`attendo.model.transformer`)::

    encoder.embed / decoder.embed          embeddings (scaled by sqrt(d_model) on use: both)
    *.pos (sinusoidal table or learned)    position_encodings.encodings, written out in full
                                           (attendo interleaves sin/cos; the table is exact)
    self_attn.W_qkv  [q; k; v]             self_attention.linear[0] (the same fused layout)
    cross_attn.W_q, cross_attn.W_kv [k; v] attention.linear[0], attention.linear[1]
    *_attn.W_o                             *.linear[-1]
    norm_attn / norm_self, norm_cross      self_attention.layer_norm, attention.layer_norm
    ff.W_1, ff.W_2, norm_ff                ffn.linear_0, ffn.linear_1, ffn.layer_norm
    final_norm (pre-norm only)             encoder.layer_norm, decoder.layer_norm
    decoder.out (tied or not, with bias)   decoder.projection

Both scale attention scores by 1/sqrt(d_head), use ReLU in the feed-forward layer and
LayerNorm with eps 1e-5 (set explicitly: CTranslate2's default is 1e-6). Pre- and post-norm
map onto ``pre_norm``. attendo adds no BOS/EOS to the source and starts the target with
``<s>``, so the spec keeps ``add_source_bos/eos`` off and ``decoder_start_token = "<s>"``;
the vocabularies are attendo's id-ordered token lists (``<pad> <unk> <s> </s>`` first).

One difference that remains: attendo maps a literal ``<s>``, ``</s>`` or ``<pad>`` in the
input text to ``<unk>``, CTranslate2 to the special token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import ExportError, copy_tokenizer_files, load_checked

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which attendo uses


def check_ctranslate2(cfg) -> None:
    """Refuse, naming the setting and the reason, what CTranslate2 cannot run."""
    m = cfg.model
    if m.decoder != "transformer":
        raise ExportError(f"model.decoder: {m.decoder!r} cannot be exported to CTranslate2, "
                          "which runs Transformer decoders only (its TransformerSpec has no "
                          "recurrent layers); use --format onnx for RNN decoders")
    if m.encoder != "transformer":
        raise ExportError(f"model.encoder: {m.encoder!r} cannot be exported to CTranslate2, "
                          "which runs Transformer encoders only; use --format onnx")
    if m.copy:
        raise ExportError("model.copy: CTranslate2 has no pointer-generator (its output is one "
                          "softmax over the fixed target vocabulary, with no copy distribution "
                          "or p_gen); use attendo")
    if m.coverage:
        raise ExportError("model.coverage: CTranslate2's attention takes no coverage vector; "
                          "use attendo")
    if m.attention_normalizer != "softmax":
        raise ExportError(f"model.attention_normalizer: {m.attention_normalizer!r} is not "
                          "supported by CTranslate2, whose attention is softmax only")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _linear(spec, lin: torch.nn.Linear) -> None:
    spec.weight = _np(lin.weight)
    if lin.bias is not None:
        spec.bias = _np(lin.bias)


def _norm(spec, ln: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _np(ln.weight), _np(ln.bias)


def position_table(part, n: int) -> np.ndarray:
    """The (n, D) positions of an attendo Transformer encoder or decoder: the learned table
    as it is, or the sinusoidal table computed for n positions."""
    from attendo.model.positions import LearnedPositions, SinusoidalPositions

    pos = part.pos
    if isinstance(pos, LearnedPositions):
        return _np(pos.weight)
    assert isinstance(pos, SinusoidalPositions)
    return _np(SinusoidalPositions.table(n, pos.dim))


def _stack(spec, part, n_pos: int, pre: bool) -> None:
    """What the encoder and decoder specs share: positions, scaled embeddings (x *
    sqrt(d_model), as attendo's _EmbeddedTokens), the final norm, each layer's feed-forward
    block and its self-attention."""
    spec.position_encodings.encodings = position_table(part, n_pos)
    spec.scale_embeddings = True
    if pre:
        _norm(spec.layer_norm, part.final_norm)
    for ls, layer in zip(spec.layer, part.layers):
        _linear(ls.self_attention.linear[0], layer.self_attn.W_qkv)
        _linear(ls.self_attention.linear[1], layer.self_attn.W_o)
        _linear(ls.ffn.linear_0, layer.ff.W_1)
        _linear(ls.ffn.linear_1, layer.ff.W_2)
        _norm(ls.ffn.layer_norm, layer.norm_ff)


def build_spec(model, cfg, src_tokens: list[str], tgt_tokens: list[str]):
    """A ctranslate2 TransformerSpec holding model's weights (fp32, not yet quantized)."""
    from ctranslate2.specs import transformer_spec

    check_ctranslate2(cfg)
    m, enc, dec = cfg.model, model.encoder, model.decoder
    spec = transformer_spec.TransformerSpec.from_config((m.enc_layers, m.dec_layers), m.heads,
                                                        pre_norm=m.norm == "pre")
    spec.config.decoder_start_token = "<s>"
    spec.config.layer_norm_epsilon = LAYER_NORM_EPS
    # enough positions for the longest input attendo accepts and the longest output it writes
    n_pos = max(m.max_positions, cfg.decode.max_input_tokens, cfg.decode.max_len + 1)
    e, d = spec.encoder, spec.decoder
    e.embeddings[0].weight = _np(enc.embed.weight)
    _stack(e, enc, n_pos, m.norm == "pre")
    for ls, layer in zip(e.layer, enc.layers):
        _norm(ls.self_attention.layer_norm, layer.norm_attn)
    d.embeddings.weight = _np(dec.embed.weight)
    _stack(d, dec, n_pos, m.norm == "pre")
    _linear(d.projection, dec.out)
    for ls, layer in zip(d.layer, dec.layers):
        _norm(ls.self_attention.layer_norm, layer.norm_self)
        _linear(ls.attention.linear[0], layer.cross_attn.W_q)
        _linear(ls.attention.linear[1], layer.cross_attn.W_kv)
        _linear(ls.attention.linear[2], layer.cross_attn.W_o)
        _norm(ls.attention.layer_norm, layer.norm_cross)
    spec.register_source_vocabulary(list(src_tokens))
    spec.register_target_vocabulary(list(tgt_tokens))
    return spec


def export_ctranslate2(model_dir: str | Path, out: str | Path, quantization: str | None = None
                       ) -> Path:
    """Write a CTranslate2 model of the attendo model in ``model_dir`` to ``out`` (replaced
    if it exists), with the tokenizer and vocabulary files copied beside it.
    ``quantization``: CTranslate2's weight type (None keeps float32; "int8", "float16", ...);
    any model can also be loaded with another ``compute_type``."""
    cfg, tr = load_checked(model_dir, "ctranslate2", check_ctranslate2)
    spec = build_spec(tr.model, cfg, tr.src.vocab.itos, tr.tgt.vocab.itos)
    spec.validate()
    spec.optimize(quantization=quantization)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    copy_tokenizer_files(model_dir, out)
    return out


def ct2_translate_pieces(ct2_translator, src_pieces: list[list[str]], caps: list[int] | int,
                         beam: int = 1, batch_size: int = 64, length_penalty: float = 0.0,
                         scores: list[float] | None = None) -> list[list[str]]:
    """Translate source pieces with a ``ctranslate2.Translator`` under attendo's decoding
    rules: output caps per sentence (``max_output_lengths``; sentences are grouped by cap),
    no minimum length, scores as raw sums of log-probabilities when ``length_penalty`` is 0.
    (CTranslate2's length penalty is score / length ** alpha, not GNMT's, so only 0 agrees.)
    An empty source gives an empty output, as in attendo. ``scores``, when given a list, gets
    each output's score (with ``length_penalty`` 0: the sum of its log-probabilities, EOS
    included, as attendo's ``Translation.log_prob``)."""
    if isinstance(caps, int):
        caps = [caps] * len(src_pieces)
    out: list[list[str]] = [[] for _ in src_pieces]
    if scores is not None:
        scores[:] = [0.0] * len(src_pieces)
    groups: dict[int, list[int]] = {}
    for i, (p, cap) in enumerate(zip(src_pieces, caps)):
        if p:
            groups.setdefault(cap, []).append(i)
    for cap, rows in groups.items():
        res = ct2_translator.translate_batch(
            [src_pieces[i] for i in rows], max_batch_size=batch_size, beam_size=beam,
            length_penalty=length_penalty, max_decoding_length=cap, min_decoding_length=0,
            max_input_length=0, return_scores=scores is not None)
        for i, r in zip(rows, res):
            out[i] = r.hypotheses[0]
            if scores is not None:
                scores[i] = r.scores[0]
    return out
