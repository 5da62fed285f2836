"""attendo model -> two ONNX graphs: the encoder, and one decoder step with explicit caches.

``encoder.onnx``: ``src`` (B, S) int64, ``src_lens`` (B,) int64 -> ``memory`` (B, S, D_enc),
``src_pad_mask`` (B, S) bool (True at padding), and the decoder's initial state (what
``decoder.init_state`` computes once per source):

- Transformer decoder: ``cross_k_i``, ``cross_v_i`` (B, H, S, d), layer i's cross-attention
  keys and values of the encoder states;
- RNN decoder: ``keys`` (B, S, *) (the scorer's prepared keys), ``h`` (B, L, H) (and ``c``
  for an LSTM), ``attn_vec`` (B, O) (input feeding), ``cov`` (B, S) with coverage.

``decoder_step.onnx``: ``y_prev`` (B,) int64 and the state -> ``log_probs`` (B, V) float32
and the new recurrent state, each named ``new_<name>``:

- Transformer: inputs ``step`` (int64 scalar: tokens decoded so far = position of y_prev),
  ``src_pad_mask``, ``cross_k_i``, ``cross_v_i``, ``self_k_i``, ``self_v_i`` (B, H, t, d);
  outputs ``new_self_k_i``, ``new_self_v_i`` (B, H, t+1, d). The caches start empty (t = 0).
- RNN: inputs ``src_pad_mask``, ``memory``, ``keys``, ``h`` (``c``), ``attn_vec`` (``cov``);
  outputs ``new_h`` (``new_c``), ``new_attn_vec`` (``new_cov``).

Batch, source length and cache length are dynamic axes. ``attendo_onnx.json`` beside them
says which inputs are per-source (reordered only when rows are dropped) and which are
recurrent (reordered at every beam step), and the decoding settings.
:mod:`attendo.export.onnx_decode` runs greedy and beam search over the two graphs.

Exported with the TorchScript exporter (``dynamo=False``): the graphs are traces of attendo's
own modules, with the Python control flow of the model's configuration baked in.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ExportError, copy_tokenizer_files, load_checked

META_FILE = "attendo_onnx.json"


def check_onnx(cfg) -> None:
    """Refuse, naming the setting and the reason, what the exported graphs cannot run."""
    m = cfg.model
    if m.copy:
        raise ExportError("model.copy: the pointer-generator's output vocabulary grows with "
                          "each sentence's source-only words (ids V, V+1, ...), which the "
                          "exported decoder step does not model; use attendo")
    if m.attention_window:
        raise ExportError("model.attention_window: local attention centres its window on the "
                          "target step, which the exported RNN decoder step does not take as "
                          "an input; use attendo")


class TransformerInit(nn.Module):
    """Encoder + the decoder's cross-attention keys and values (init_state)."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder

    def forward(self, src: Tensor, src_lens: Tensor) -> tuple[Tensor, ...]:
        enc = self.encoder(src, src_lens)
        # (B, H, S, d) each, k_0, v_0, k_1, v_1, ...
        kv = [x for layer in self.decoder.layers for x in layer.cross_attn.project_kv(enc.out)]
        return (enc.out, enc.src_pad_mask, *kv)


class TransformerStep(nn.Module):
    """One Transformer decoder step with the self-attention caches as tensors.

    The position comes from the ``step`` input (a table lookup), not from a Python int, so
    one graph serves every step."""

    def __init__(self, decoder, n_positions: int):
        super().__init__()
        from .ct2 import position_table

        self.dec, self.L = decoder, len(decoder.layers)
        self.register_buffer("pos", torch.from_numpy(position_table(decoder, n_positions)))

    def forward(self, y_prev: Tensor, step: Tensor, src_pad_mask: Tensor, *caches: Tensor
                ) -> tuple[Tensor, ...]:
        L, dec = self.L, self.dec
        cross_k, cross_v = caches[0:L], caches[L : 2 * L]
        self_k, self_v = caches[2 * L : 3 * L], caches[3 * L : 4 * L]
        pos = self.pos.index_select(0, step.reshape(1))  # (1, D)
        x = dec.embed(y_prev).unsqueeze(1) * dec.scale + pos.unsqueeze(0)  # (B, 1, D)
        ks, vs = [], []
        for i, layer in enumerate(dec.layers):
            x, k, v, _, _ = layer(x, cross_k[i], cross_v[i], src_pad_mask, self_k[i], self_v[i])
            ks.append(k)  # (B, H, t+1, d)
            vs.append(v)
        lp = F.log_softmax(dec.out(dec.top(x.squeeze(1))).float(), dim=-1)  # (B, V)
        return (lp, *ks, *vs)


RNN_STATE = ("h", "c", "attn_vec", "cov")  # recurrent fields of RNNDecoderState
RNN_SOURCE = ("memory", "keys")  # per-source fields (besides src_pad_mask)


class RNNInit(nn.Module):
    """Encoder + RNNDecoder.init_state, as the tensors that exist for this model."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder
        self.names = [n for n in names if n != "memory"]  # memory is the encoder's output

    def forward(self, src: Tensor, src_lens: Tensor) -> tuple[Tensor, ...]:
        enc = self.encoder(src, src_lens)
        state = self.decoder.init_state(enc)
        return (enc.out, enc.src_pad_mask, *(getattr(state, n) for n in self.names))


class RNNStep(nn.Module):
    """One RNNDecoder.step with its state (h, c, attn_vec, cov, memory, keys) as tensors."""

    def __init__(self, decoder, names: list[str]):
        super().__init__()
        self.dec, self.names = decoder, names  # names: per-source then recurrent, present ones

    def forward(self, y_prev: Tensor, src_pad_mask: Tensor, *tensors: Tensor
                ) -> tuple[Tensor, ...]:
        from attendo.model.decoders import RNNDecoderState

        given = dict(zip(self.names, tensors))
        fields = {n: given.get(n) for n in RNN_STATE + RNN_SOURCE}
        if "memory" not in given:  # attention "none": memory is never read
            fields["memory"] = src_pad_mask.unsqueeze(-1).float()
        state = RNNDecoderState(src_pad_mask=src_pad_mask, **fields)
        lp, new, _ = self.dec.step(y_prev, state, need_info=False)
        return (lp.float(), *(getattr(new, n) for n in self.names if n in RNN_STATE))


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]], opset: int) -> None:
    with warnings.catch_warnings():  # tracer warnings about Python ints and bools
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)


def export_onnx(model_dir: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Write encoder.onnx, decoder_step.onnx and attendo_onnx.json for the model in
    ``model_dir`` into ``out``, with the tokenizer and vocabulary files beside them."""
    cfg, tr = load_checked(model_dir, "onnx", check_onnx)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = export_graphs(tr.model.eval(), cfg, out, opset)
    meta.update(bos=2, eos=3, pad=0, src_vocab=len(tr.src.vocab), tgt_vocab=len(tr.tgt.vocab),
                decode={k: getattr(cfg.decode, k) for k in (
                    "beam_size", "length_penalty", "max_len_ratio", "max_len", "batch_size",
                    "max_input_tokens")},
                lowercase=cfg.data.lowercase)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    copy_tokenizer_files(model_dir, out)
    return out


@torch.no_grad()
def export_graphs(model, cfg, out: Path, opset: int = 17) -> dict:
    """Trace and write the two graphs of ``model`` (eval mode); returns the metadata."""
    B, S, t = 2, 5, 3
    src = torch.randint(4, model.encoder.embed.num_embeddings, (B, S))
    src_lens = torch.tensor([S, S - 2])
    enc_axes = {"src": {0: "batch", 1: "src_len"}, "src_lens": {0: "batch"},
                "memory": {0: "batch", 1: "src_len"}, "src_pad_mask": {0: "batch", 1: "src_len"}}
    with model.unfused():  # the packed nn.GRU exports as one ONNX GRU; the fused loop would not
        if cfg.model.decoder == "transformer":
            return _export_transformer(model, cfg, out, opset, src, src_lens, t, enc_axes)
        return _export_rnn(model, out, opset, src, src_lens, enc_axes)


def _export_transformer(model, cfg, out, opset, src, src_lens, t, enc_axes) -> dict:
    dec = model.decoder
    L, H, d = len(dec.layers), dec.heads, dec.d_head
    cross = [f"cross_{kv}_{i}" for kv in "kv" for i in range(L)]  # k_0 .. k_L-1, v_0 ..
    selfc = [f"self_{kv}_{i}" for kv in "kv" for i in range(L)]
    init = TransformerInit(model).eval()
    # TransformerInit returns k_0, v_0, k_1, v_1, ...: name them in that order
    init_names = ["memory", "src_pad_mask"] + [f"cross_{kv}_{i}" for i in range(L) for kv in "kv"]
    by_name = dict(zip(init_names, init(src, src_lens)))
    _export(init, (src, src_lens), out / "encoder.onnx", ["src", "src_lens"], init_names,
            dict(enc_axes, **{n: {0: "batch", 2: "src_len"} for n in cross}), opset)
    n_pos = max(cfg.model.max_positions, cfg.decode.max_input_tokens, cfg.decode.max_len + 1)
    step = TransformerStep(dec, n_pos).eval()
    past = [torch.randn(src.size(0), H, t, d) for _ in range(2 * L)]
    args = (src[:, 0], torch.tensor(t), by_name["src_pad_mask"], *[by_name[n] for n in cross],
            *past)
    new = [f"new_{n}" for n in selfc]
    axes = {"y_prev": {0: "batch"}, "src_pad_mask": {0: "batch", 1: "src_len"},
            "log_probs": {0: "batch"}, **{n: {0: "batch", 2: "src_len"} for n in cross},
            **{n: {0: "batch", 2: "t"} for n in selfc},
            **{n: {0: "batch", 2: "t_next"} for n in new}}
    _export(step, args, out / "decoder_step.onnx",
            ["y_prev", "step", "src_pad_mask", *cross, *selfc], ["log_probs", *new], axes, opset)
    return {"decoder": "transformer", "per_source": ["src_pad_mask", *cross],
            "recurrent": selfc, "empty_cache": [H, d], "max_positions": n_pos}


def _export_rnn(model, out, opset, src, src_lens, enc_axes) -> dict:
    dec = model.decoder
    enc = model.encoder(src, src_lens)
    state = dec.init_state(enc)
    # memory and keys are never read by a decoder without attention
    source = [n for n in RNN_SOURCE if dec.has_attention and getattr(state, n) is not None]
    recurrent = [n for n in RNN_STATE if getattr(state, n) is not None]
    names = source + recurrent
    init = RNNInit(model, names).eval()
    axes = dict(enc_axes, keys={0: "batch", 1: "src_len"}, h={0: "batch"}, c={0: "batch"},
                attn_vec={0: "batch"}, cov={0: "batch", 1: "src_len"})
    _export(init, (src, src_lens), out / "encoder.onnx", ["src", "src_lens"],
            ["memory", "src_pad_mask", *init.names], axes, opset)
    args = (src[:, 0], state.src_pad_mask, *(getattr(state, n) for n in names))
    step_axes = {"y_prev": {0: "batch"}, "log_probs": {0: "batch"},
                 **{n: axes[n] for n in ["src_pad_mask", *names]},
                 **{f"new_{n}": axes[n] for n in recurrent}}
    _export(RNNStep(dec, names).eval(), args, out / "decoder_step.onnx",
            ["y_prev", "src_pad_mask", *names], ["log_probs", *(f"new_{n}" for n in recurrent)],
            step_axes, opset)
    return {"decoder": "rnn", "per_source": ["src_pad_mask", *source], "recurrent": recurrent}
