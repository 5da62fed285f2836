"""Sparse normalizers (sparsemax, 1.5-entmax) and local attention (Luong local-m / local-p)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model, random_batch

from attendo.config import ConfigError, ModelConfig, config_from_dict
from attendo.data.vocab import Vocab
from attendo.model.attention import Attention, build_scorer, masked_softmax
from attendo.model.normalizers import entmax15, normalize, sparsemax
from attendo.model.transformer import MultiHeadAttention

V = 13
SPARSE = ("sparsemax", "entmax15")


# --------------------------------------------------------------------------- references


def _bisect_tau(z: torch.Tensor, mass) -> torch.Tensor:
    """tau with sum_j mass(z_j - tau) = 1 per row, by bisection (float64, no sorting)."""
    lo = z.max(-1, keepdim=True).values - 1.5
    hi = z.max(-1, keepdim=True).values
    for _ in range(200):
        mid = (lo + hi) / 2
        too_big = mass(z - mid).sum(-1, keepdim=True) < 1
        hi = torch.where(too_big, mid, hi)
        lo = torch.where(too_big, lo, mid)
    return (lo + hi) / 2


def ref_sparsemax(z: torch.Tensor) -> torch.Tensor:
    z = z.double()
    return (z - _bisect_tau(z, lambda x: x.clamp_min(0))).clamp_min(0)


def ref_entmax15(z: torch.Tensor) -> torch.Tensor:
    z = z.double() / 2
    return (z - _bisect_tau(z, lambda x: x.clamp_min(0) ** 2)).clamp_min(0) ** 2


REF = {"sparsemax": ref_sparsemax, "entmax15": ref_entmax15}
FN = {"sparsemax": sparsemax, "entmax15": entmax15}


def _mask(lens, S):
    return torch.arange(S)[None, :] >= torch.tensor(lens)[:, None]  # (B, S) True at padding


# --------------------------------------------------------------------------- normalizers


def test_hand_examples():
    z = torch.tensor([1.0, 0.5, -1.0])
    torch.testing.assert_close(sparsemax(z), torch.tensor([0.75, 0.25, 0.0]))
    torch.testing.assert_close(sparsemax(torch.tensor([3.0, 0.0])), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(sparsemax(torch.tensor([0.2, 0.2, 0.2, 0.2])), torch.full((4,), 0.25))
    # 1.5-entmax of [1, 0.5, -1]: p = (z/2 - tau)^2 on {0, 1}; with a = 0.5 - tau,
    # a^2 + (a - 0.25)^2 = 1 gives a = (0.5 + sqrt(7.75)) / 4
    a = (0.5 + math.sqrt(7.75)) / 4
    torch.testing.assert_close(entmax15(z), torch.tensor([a * a, (a - 0.25) ** 2, 0.0]))
    torch.testing.assert_close(entmax15(torch.zeros(5)), torch.full((5,), 0.2))
    assert entmax15(torch.tensor([10.0, 0.0]))[1] == 0  # far apart: one-hot, exactly


@pytest.mark.parametrize("name", SPARSE)
def test_matches_bisection_reference_sums_to_one_and_masks_exactly(name):
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    z = torch.randn(64, 9, generator=g, dtype=f64) * torch.rand(64, 1, generator=g, dtype=f64) * 4
    lens = torch.randint(1, 10, (64,), generator=g).tolist()
    mask = _mask(lens, 9)
    p = FN[name](z, mask)
    assert p.dtype == torch.float64
    assert torch.all(p.masked_select(mask) == 0)  # padding: exactly zero
    torch.testing.assert_close(p.sum(-1), torch.ones(64, dtype=torch.float64))
    for b, n in enumerate(lens):
        torch.testing.assert_close(p[b, :n], REF[name](z[b, :n]), atol=1e-9, rtol=0)
    assert (p == 0).sum() > mask.sum()  # sparse: also real positions get exact zeros
    one = FN[name](z[:1], _mask([1], 9))  # one valid position gets all the weight
    assert one[0, 0] == 1 and torch.all(one[0, 1:] == 0)


@pytest.mark.parametrize("name", SPARSE)
def test_gradcheck_float64_with_masks(name):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = _mask([6, 4, 1, 3, 2], 6)
    assert torch.autograd.gradcheck(lambda x: FN[name](x, mask), (z,))
    assert torch.autograd.gradcheck(lambda x: FN[name](x * 3, mask[:, None]), (z[:, None],))
    # the gradient never reaches padding
    up = torch.randn(5, 6, generator=g, dtype=torch.float64)
    (gz,) = torch.autograd.grad((FN[name](z, mask) * up).sum(), z)
    assert torch.all(gz.masked_select(mask) == 0)


@pytest.mark.parametrize("name", SPARSE)
def test_stable_in_low_precision_and_large_scores(name):
    z = torch.tensor([[3000.0, 2999.5, -4000.0, 1.0], [1e-3, 0.0, 2e-3, -1e-3]])
    p = FN[name](z.bfloat16(), _mask([3, 4], 4))
    assert p.dtype == torch.float32 and torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(2))
    torch.testing.assert_close(p, FN[name](z.bfloat16().float(), _mask([3, 4], 4)))
    # -inf scores (the location scorer past max_len) count as masked
    q = FN[name](torch.tensor([[0.5, float("-inf"), 0.0]]))
    assert q[0, 1] == 0 and torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(1))
    if torch.cuda.is_available():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pc = FN[name](z.cuda().bfloat16(), _mask([3, 4], 4).cuda())
        assert pc.dtype == torch.float32
        torch.testing.assert_close(pc.cpu(), p)


def test_softmax_normalizer_is_masked_softmax():
    z = torch.randn(2, 3, 5)
    mask = _mask([5, 2], 5)
    torch.testing.assert_close(normalize(z, "softmax", mask[:, None]), masked_softmax(z, mask))
    with pytest.raises(ValueError, match="normalizer"):
        normalize(z, "sparsemix")


# --------------------------------------------------------------------------- RNN attention


def _attn_inputs(B=3, Tq=4, S=7, Dq=6, Dk=5, lens=(7, 4, 1), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, Dq, generator=g, dtype=dtype)
    k = torch.randn(B, S, Dk, generator=g, dtype=dtype)
    return q, k, _mask(list(lens), S)


@pytest.mark.parametrize("scorer", ["dot", "general", "additive", "scaled_dot", "location"])
@pytest.mark.parametrize("name", SPARSE)
def test_every_scorer_with_sparse_normalizer(scorer, name):
    q, k, mask = _attn_inputs()
    attn = Attention(build_scorer(scorer, 6, 5), normalizer=name)
    ctx, w = attn(q, attn.prepare(k), k, mask)
    assert torch.all(w.masked_select(mask[:, None].expand_as(w)) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(ctx, torch.bmm(w, k))


@pytest.mark.parametrize("scorer", ["dot", "general", "additive", "scaled_dot", "location"])
def test_local_m_gives_zero_weight_outside_the_window(scorer):
    D, lens = 1, (7, 4, 1)
    q, k, mask = _attn_inputs(lens=lens)
    attn = Attention(build_scorer(scorer, 6, 5), window=D, local="monotonic")
    for step in (0, 2, 5):
        _, w = attn(q, attn.prepare(k), k, mask, step=step)  # queries are steps step..step+3
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
        for b, n in enumerate(lens):
            for t in range(4):
                p = min(step + t, n - 1)
                inside = [j for j in range(7) if abs(j - p) <= D and j < n]
                outside = [j for j in range(7) if j not in inside]
                assert torch.all(w[b, t, outside] == 0), (b, t, w[b, t])
                assert torch.all(w[b, t, inside] > 0)


def test_local_p_position_in_range_and_gaussian_weighting():
    D, lens = 2, (7, 4, 1)
    q, k, mask = _attn_inputs(lens=lens)
    attn = Attention(build_scorer("general", 6, 5), window=D, local="predictive", query_dim=6)
    for scale in (0.1, 1.0, 100.0):  # 100: the sigmoid saturates, p_i at 0 or S
        with torch.no_grad():
            attn.v_p.weight.normal_().mul_(scale)
        p = attn.aligned_position(q, mask, 0)  # (B, Tq)
        S_b = torch.tensor(lens, dtype=p.dtype)[:, None]
        assert torch.all(p >= 0) and torch.all(p <= S_b)
        _, w = attn(q, attn.prepare(k), k, mask)
        j = torch.arange(7, dtype=p.dtype)
        dist = j - p[..., None]
        outside = (dist.abs() > D) | mask[:, None]
        assert torch.all(w[outside] == 0)
        assert torch.all(w.sum(-1) <= 1 + 1e-6) and torch.all(w.sum(-1) > 0)
        # dividing the Gaussian out leaves a distribution over the window
        base = w / torch.exp(-dist**2 / (2 * (D / 2) ** 2))
        torch.testing.assert_close(base.sum(-1), torch.ones(3, 4))


def test_local_p_attention_gradcheck_float64():
    q, k, mask = _attn_inputs(lens=(7, 5, 2), dtype=torch.float64, seed=3)
    attn = Attention(build_scorer("additive", 6, 5), normalizer="entmax15", window=2,
                     local="predictive", query_dim=6).double()
    names = ["W_p.weight", "v_p.weight"]
    params = {n: p.detach().clone() for n, p in attn.named_parameters()}

    def f(q, Wp, vp):
        ps = dict(params, **{"W_p.weight": Wp, "v_p.weight": vp})
        ctx, w = torch.func.functional_call(attn, ps, (q, attn.prepare(k), k, mask))
        return ctx, w

    inputs = (q.requires_grad_(), *(params[n].clone().requires_grad_() for n in names))
    assert torch.autograd.gradcheck(f, inputs)


# --------------------------------------------------------------------------- RNN decoder

VARIANTS = {
    "sparsemax": dict(attention_normalizer="sparsemax"),
    "entmax15": dict(attention_normalizer="entmax15"),
    "local-m": dict(attention_window=1, local="monotonic"),
    "local-p": dict(attention_window=2, local="predictive"),
    "local-m-sparsemax": dict(attention_window=2, local="monotonic", attention_normalizer="sparsemax"),
    "local-previous": dict(attention_window=1, local="previous"),
}
DEC_GRID = [(v, a, s, r) for v in VARIANTS for a, s, r in (
    ("additive", "luong", "gru"),  # the fusable setting: the fused pass must be bypassed
    ("general", "bahdanau", "lstm"),
    ("location", "luong", "lstm"),
    ("dot", "bahdanau", "gru"),
)]


def _data(lens=(5, 3, 1, 4), T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    src, src_lens = random_batch(list(lens), V, g)
    tgt_in = torch.randint(4, V, (len(lens), T), generator=g)
    tgt_in[:, 0] = Vocab.BOS
    return src, src_lens, tgt_in


def _step_all(model, src, src_lens, tgt_in):
    state = model.start(src, src_lens)
    lps, attns = [], []
    for t in range(tgt_in.size(1)):
        lp, state, info = model.decoder.step(tgt_in[:, t], state)
        lps.append(lp)
        attns.append(info["attn"])
    return torch.stack(lps, 1), torch.stack(attns, 1)


def _assert_step_equals_teacher_forced(model):
    """Step-by-step decoding gives the teacher-forced log-probabilities and attention;
    returns the data and the teacher-forced info."""
    src, src_lens, tgt_in = _data()
    with torch.no_grad():
        lp_tf, info = model.log_probs(src, src_lens, tgt_in)
        lp_step, attn_step = _step_all(model, src, src_lens, tgt_in)
    torch.testing.assert_close(lp_step, lp_tf, atol=1e-5, rtol=0)
    torch.testing.assert_close(attn_step, info["attn"], atol=1e-5, rtol=0)
    return src, src_lens, info


@pytest.mark.parametrize("variant,attention,style,rnn", DEC_GRID,
                         ids=[f"{v}-{a}-{s}-{r}" for v, a, s, r in DEC_GRID])
def test_step_equals_teacher_forced(variant, attention, style, rnn):
    kw = VARIANTS[variant]
    model = make_model(V, attention=attention, attention_style=style, rnn_type=rnn, **kw)
    assert not model.decoder.fusable()
    src, src_lens, info = _assert_step_equals_teacher_forced(model)
    attn = info["attn"]
    pad = _mask(src_lens.tolist(), src.size(1))[:, None].expand_as(attn)
    assert torch.all(attn[pad] == 0)
    if kw.get("local") == "predictive":
        assert torch.all(attn.sum(-1) <= 1 + 1e-6)
    else:
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]))
    if kw.get("local") == "monotonic":
        D = kw["attention_window"]
        for b, n in enumerate(src_lens.tolist()):
            for t in range(attn.size(1)):
                p = min(t, n - 1)
                far = [j for j in range(src.size(1)) if abs(j - p) > D]
                assert torch.all(attn[b, t, far] == 0)
    if kw.get("local") == "previous":  # centred on the last step's peak (-1 before the first)
        D = kw["attention_window"]
        for b, n in enumerate(src_lens.tolist()):
            p = -1
            for t in range(attn.size(1)):
                near = [j for j in range(n) if abs(j - p) <= D]
                far = [j for j in range(src.size(1)) if j not in near]
                assert near, (b, t, p)  # the windows here never leave the source
                assert torch.all(attn[b, t, far] == 0), (b, t, p, attn[b, t])
                p = int(attn[b, t].argmax())


def test_local_previous_window_past_the_end_falls_back_to_the_whole_source():
    """A window that holds no real position (the peak of a longer row's step, then a row
    reordered next to a shorter source) gives the whole source, never NaN."""
    q, k, mask = _attn_inputs(lens=(7, 4, 1))
    attn = Attention(build_scorer("general", 6, 5), window=1, local="previous")
    _, w = attn(q[:, :1], attn.prepare(k), k, mask, peak=torch.tensor([6, 6, 3]))
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 1))
    assert torch.all(w[0, 0, :5] == 0) and torch.all(w[0, 0, 5:] > 0)  # [5, 7]
    assert torch.all(w[1, 0, :4] > 0) and torch.all(w[2, 0, 0] == 1)  # whole source


def test_fusable_only_for_global_softmax():
    base = dict(attention="additive", attention_style="luong", rnn_type="gru")
    assert make_model(V, **base).decoder.fusable()
    for kw in VARIANTS.values():
        assert not make_model(V, **base, **kw).decoder.fusable()


def test_local_p_decoder_gradcheck_float64():
    """Teacher-forced outputs of a small float64 local-p decoder against W_p and v_p."""
    model = make_model(V, attention="general", attention_style="luong", attention_window=2,
                       local="predictive", emb_dim=4, enc_hidden=4, dec_hidden=5).double()
    src, src_lens, tgt_in = _data(lens=(5, 3), T=4, seed=2)
    dec = model.decoder
    params = {n: p.detach() for n, p in dec.named_parameters()}
    with torch.no_grad():
        dec.attention.v_p.weight.mul_(10)  # spread p_i over the source
        params["attention.v_p.weight"] = dec.attention.v_p.weight.detach().clone()
    state = model.start(src, src_lens)
    keys = ["attention.W_p.weight", "attention.v_p.weight"]

    def f(Wp, vp):
        ps = dict(params, **dict(zip(keys, (Wp, vp))))
        feats, info = torch.func.functional_call(dec, ps, (tgt_in, state))
        return feats, info["attn"]

    inputs = tuple(params[n].clone().requires_grad_() for n in keys)
    assert torch.autograd.gradcheck(f, inputs)


# --------------------------------------------------------------------------- transformer


@pytest.mark.parametrize("name", SPARSE)
def test_multihead_sparse_takes_the_explicit_path(name):
    torch.manual_seed(0)  # the layers' initial weights: not whatever ran before in the process
    g = torch.Generator().manual_seed(0)
    mha = MultiHeadAttention(16, 4, kv_dim=10, normalizer=name).eval()
    x, mem = torch.randn(3, 5, 16, generator=g), torch.randn(3, 7, 10, generator=g)
    pad = _mask([7, 3, 1], 7)
    q, (k, v) = mha.project_q(x), mha.project_kv(mem)
    out_w, w = mha.attend(q, k, v, pad, need_weights=True)
    out, none = mha.attend(q, k, v, pad)
    assert none is None
    torch.testing.assert_close(out, out_w)
    assert torch.all(w.masked_select(pad[:, None, None].expand_as(w)) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 5))
    assert (w == 0).sum() > pad[:, None, None].expand_as(w).sum()  # sparse beyond padding
    # causal self-attention: no weight on future positions
    sa = MultiHeadAttention(16, 4, normalizer=name).eval()
    _, ws = sa(x, None, causal=True, need_weights=True)
    assert torch.all(ws.masked_select(torch.ones(5, 5, dtype=torch.bool).triu(1)) == 0)
    # grouped one-query path (beam search) equals the plain one
    q1 = q[:, :, :1].repeat_interleave(2, 0)  # (6, H, 1, d): 2 rows per memory
    pad2 = pad.repeat_interleave(2, 0)
    out_g, w_g = mha.attend(q1, k, v, pad2, need_weights=True, group=2)
    out_p, w_p = mha.attend(q1, k.repeat_interleave(2, 0), v.repeat_interleave(2, 0), pad2,
                            need_weights=True)
    torch.testing.assert_close(out_g, out_p)
    torch.testing.assert_close(w_g, w_p)


@pytest.mark.parametrize("name", SPARSE)
def test_transformer_step_equals_teacher_forced(name):
    model = make_model(V, encoder="transformer", decoder="transformer", d_model=16, heads=2,
                       ff_dim=32, enc_layers=1, dec_layers=2, attention_normalizer=name)
    assert all(m.normalizer == name for m in model.modules() if isinstance(m, MultiHeadAttention))
    src, src_lens, info = _assert_step_equals_teacher_forced(model)
    pad = _mask(src_lens.tolist(), src.size(1))[:, None].expand_as(info["attn"])
    assert torch.all(info["attn"][pad] == 0)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides,key", [
    (["model.attention_normalizer=sparsemix"], "model.attention_normalizer"),
    (["model.local=monotone", "model.attention_window=2"], "model.local"),
    (["model.attention_window=-1"], "model.attention_window"),
    (["model.attention_window=1.5"], "model.attention_window"),
    (["model.attention_window=2", "model.attention=none"], "model.attention_window"),
    (["model.local=predictive"], "model.local"),
    (["model.attention_window=2", "model.decoder=transformer"], "model.attention_window"),
    (["model.attention_window=2", "model.local=previous", "model.decoder=transformer"],
     "model.attention_window"),
    (["model.local=previous"], "model.local"),
    (["model.attention_window=2", "model.local=predictive", "model.copy=true"], "model.local"),
    (["model.attention_normalizer=entmax15", "model.attention=none"], "model.attention_normalizer"),
    (["model.attention_windw=2"], "model.attention_windw"),
])
def test_config_rejects_naming_the_key(toy_config, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        toy_config(*overrides)


def test_config_accepts_and_round_trips(toy_config):
    cfg = toy_config("model.attention_normalizer=entmax15", "model.attention_window=3",
                     "model.local=predictive")
    assert (cfg.model.attention_normalizer, cfg.model.attention_window, cfg.model.local) == (
        "entmax15", 3, "predictive")
    import yaml
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    toy_config("model.decoder=transformer", "model.attention_normalizer=sparsemax")
    with pytest.raises(ConfigError, match="model.attention_normalizer"):
        ModelConfig(attention_normalizer="softmax2").validate()


# --------------------------------------------------------------------------- convergence


def _exact_match(trainer, n=None) -> float:
    from attendo.data.prepare import load_corpora
    from attendo.translator import Translator

    _, _, test = load_corpora(trainer.cfg.data, seed=trainer.cfg.train.seed)
    translator = Translator(trainer.model, trainer.src, trainer.tgt, trainer.cfg)
    out = translator.translate(test.src[:n], beam=1)
    return sum(o.text == ref for o, ref in zip(out, test.tgt)) / len(out)


CONVERGE = {
    "sparsemax": ["model.attention_normalizer=sparsemax"],
    "entmax15": ["model.attention_normalizer=entmax15"],
    "local-m": ["model.attention_window=2", "model.local=monotonic"],
    "local-p": ["model.attention_window=3", "model.local=predictive"],
}


@pytest.mark.parametrize("variant", list(CONVERGE))
def test_toy_task_converges(toy_config, variant):
    """Copying short sequences (where the source position of target word i is i, so local-m's
    window is the right one) after 300 steps: held-out exact match far above the untrained
    model's 0 %. The threshold is not seed-pinned: over seeds 1-2 at only 200 steps every
    variant but local-p reached >= 0.69, and local-p reached 1.0 at 300 steps for seeds 0-3."""
    from attendo.train import Trainer

    cfg = toy_config(
        "data.toy=copy", "data.toy_max_len=6", "data.toy_test_size=100",
        "model.attention=general", "train.max_steps=300", "train.valid_every=300",
        "train.log_every=50", "train.valid_bleu=false", "train.seed=0", *CONVERGE[variant],
    )
    trainer = Trainer(cfg)
    untrained = _exact_match(trainer, 50)
    trainer.run()
    acc = _exact_match(trainer)
    assert untrained < 0.05
    assert acc >= 0.5, f"{variant}: held-out exact match {acc:.2f} < 0.5"
