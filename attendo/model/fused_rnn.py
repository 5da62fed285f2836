"""The recurrent passes of the common RNN model, each as one autograd node.

Written with plain autograd, every step of the RNN encoder and the teacher-forced decoder
records some thirty small operations, and the backward replays them one by one, casting and
accumulating a gradient for every weight at every step: on a CPU most of an RNN training
step after the output layer. This module computes the same functions with hand-written
backward passes (backpropagation through time), for what the shipped RNN configs use:

- :class:`FusedGRUEncoder`: one GRU layer, one or two directions in one loop, over padded
  sequences (the same result as ``nn.GRU`` on the packed batch).
- :class:`FusedGRUAttention`: one GRU layer, Luong-style additive attention
  e_ij = v^T tanh(W_1 s_i + W_2 h_j + b), h~_i = tanh(W_c [c_i; s_i]), with or without input
  feeding; no coverage. For copy it also returns [c_i; s_i], from which the decoder computes
  p_gen outside the loop.

Forward: the input share of the GRU gates for all steps is one matrix product; each step
does the recurrent part and keeps what the backward needs. Backward: only the recurrence
is walked step by step; every weight gradient is one matrix product over all T x B rows
at the end (dW = sum_t dY_t^T X_t), and so are the gradients of the embeddings and
encoder states.

Precision: under autocast the matrix products and the recurrent state run in autocast's
dtype, the attention softmax and weights in fp32 (as autocast runs the plain modules);
gradients come back in the inputs' dtypes. ``tests/test_fused_rnn.py`` checks outputs and
every gradient against the step-by-step modules, which run for other settings
(``fusable()``) or with ``module.fused = False``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype a fused pass computes in: autocast's when it is on, else x's and the
    weights' common dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(x.dtype, weight.dtype)


def _gru_step(gi: Tensor, gh: Tensor, h: Tensor, rz: Tensor, n: Tensor, s: Tensor) -> Tensor:
    """One GRU cell step (``nn.GRUCell``'s equations) written into buffers.

    gi, gh (..., 3H): input and recurrent gate pre-activations (biases included); h (..., H)
    the previous state. Writes rz = [r; z] (..., 2H), n = tanh(gi_n + r gh_n) and the new
    state s = (1 - z) n + z h (..., H); returns s.
    """
    H = h.size(-1)
    torch.sigmoid(torch.add(gi[..., : 2 * H], gh[..., : 2 * H], out=rz), out=rz)
    torch.tanh(torch.addcmul(gi[..., 2 * H :], rz[..., :H], gh[..., 2 * H :], out=n), out=n)
    return torch.addcmul(n, rz[..., H:], h - n, out=s)


def _gru_factors(RZ: Tensor, N: Tensor, H_prev: Tensor, GHN: Tensor):
    """The GRU cell's backward factors for all steps at once: r, z, ds/d(gi_n + r gh_n) =
    (1 - z)(1 - n^2), ds/d(z logit) = (h - n) z (1 - z), d(n arg)/d(r logit) = gh_n r (1 - r)."""
    H = N.size(-1)
    R, Z = RZ[..., :H], RZ[..., H:]
    return R, Z, (1 - Z) * (1 - N * N), (H_prev - N) * Z * (1 - Z), GHN * R * (1 - R)


def _gru_step_backward(ds: Tensor, r: Tensor, dN: Tensor, dZ: Tensor, dR: Tensor,
                       dgi: Tensor, dgh: Tensor) -> None:
    """From ds (..., H), the gradient at a step's new state, write the gradients at its
    input-side (dgi) and recurrent-side (dgh) gate pre-activations (..., 3H). The direct
    path to the previous state, ds * z, is the caller's (with dgh @ W_hh)."""
    H = ds.size(-1)
    dnp = torch.mul(ds, dN, out=dgi[..., 2 * H :])  # at gi_n + r gh_n
    torch.mul(ds, dZ, out=dgi[..., H : 2 * H])  # at z's logit
    torch.mul(dnp, dR, out=dgi[..., :H])  # at r's logit
    dgh[..., : 2 * H] = dgi[..., : 2 * H]
    torch.mul(dnp, r, out=dgh[..., 2 * H :])


class FusedGRUAttention(torch.autograd.Function):
    """vecs (B, T, DO), attn (B, T, S) = the Luong-style GRU + additive-attention decoder run
    over embedded targets. See the module docstring; arguments as in :func:`fused_decode`.

    The scorer's tanh is computed as tanh(x) = 2 sigmoid(2x) - 1 (on a CPU sigmoid is 2-3x
    cheaper than tanh). With sg = sigmoid(2x), e_ij = 2 v . sg - sum(v), and the constant
    drops out of the softmax; 1 - tanh(x)^2 = 4 sg (1 - sg).
    """

    @staticmethod
    def forward(ctx, emb, h0, memory, keys, pad_mask, W_ih, b_ih, W_hh, b_hh, W_1, v, W_c,
                input_feeding: bool, dtype: torch.dtype, want_ch: bool = False):
        B, T, E = emb.shape
        H, S, D, DO, A = W_hh.size(1), memory.size(1), memory.size(2), W_c.size(0), W_1.size(0)
        cast = dict(dtype=dtype)
        Wih, Wc = (w.to(**cast) for w in (W_ih, W_c))
        bih, bhh = (b.to(**cast) for b in (b_ih, b_hh))
        # one product per step gives W_1 s_i (doubled, for the sigmoid) and W_hh s_i + b_hh
        W1hh = torch.cat([2 * W_1, W_hh]).to(**cast)  # (A + 3H, H)
        b1hh = torch.cat([bhh.new_zeros(A), bhh])
        v2 = (2 * v).to(**cast)
        mem = memory.to(**cast)
        k2 = 2 * keys.to(**cast)  # (B, S, A)
        x = emb.to(**cast)
        sdt = torch.promote_types(dtype, torch.float32)  # softmax dtype: fp32 or wider
        # the embedding share of the input gates, every step at once: (T, B, 3H)
        GE = torch.addmm(bih, x.transpose(0, 1).reshape(T * B, E), Wih[:, :E].t()).view(T, B, 3 * H)
        W_feed = Wih[:, E:]  # (3H, DO) the input-feeding share
        mask = torch.zeros(B, S, dtype=sdt, device=emb.device)
        mask.masked_fill_(pad_mask, float("-inf"))  # (B, S) 0 or -inf
        Hs = x.new_empty(T + 1, B, H)  # s_{i-1} for each step, then s_T
        Hs[0] = h0
        QG = x.new_empty(T + 1, B, A + 3 * H)  # [2 W_1 s_i; W_hh s_{i-1} + b_hh] (rows shifted)
        torch.addmm(b1hh, Hs[0], W1hh.t(), out=QG[0])  # only its W_hh part is read
        RZ, N = x.new_empty(T, B, 2 * H), x.new_empty(T, B, H)  # gates r, z and n
        SG = x.new_empty(T, B, S, A)  # sigmoid(2 (W_1 s_i + W_2 h_j + b))
        ATT = torch.empty(T, B, S, dtype=sdt, device=emb.device)
        CH = x.new_empty(T, B, D + H)  # [c_i; s_i], the input of W_c
        VEC = x.new_empty(T, B, DO)  # h~_i
        vec = None
        for t in range(T):
            h = Hs[t]
            gh = QG[t, :, A:]  # (B, 3H)
            gi = GE[t] if vec is None or not input_feeding else torch.addmm(GE[t], vec, W_feed.t())
            s = _gru_step(gi, gh, h, RZ[t], N[t], Hs[t + 1])  # (B, H)
            torch.addmm(b1hh, s, W1hh.t(), out=QG[t + 1])
            sg = torch.sigmoid(torch.add(k2, QG[t + 1, :, :A].unsqueeze(1), out=SG[t]), out=SG[t])
            a = ATT[t]
            a.copy_(torch.softmax((sg @ v2).to(sdt) + mask, dim=-1))  # (B, S)
            ch = CH[t]
            ch[:, :D] = torch.bmm(a.to(**cast).unsqueeze(1), mem).squeeze(1)  # c_i
            ch[:, D:] = s
            vec = torch.tanh(torch.mm(ch, Wc.t(), out=VEC[t]), out=VEC[t])  # (B, DO)
        ctx.save_for_backward(emb, h0, memory, keys, W_ih, b_ih, W_hh, b_hh, W_1, v, W_c)
        ctx.buffers = (x, Wih, W1hh, Wc, mem, Hs, QG, RZ, N, SG, ATT, CH, VEC)
        ctx.input_feeding = input_feeding
        ch_out = CH.transpose(0, 1).contiguous() if want_ch else CH.new_empty(0)  # (B, T, D + H)
        return VEC.transpose(0, 1).contiguous(), ATT.transpose(0, 1).contiguous(), ch_out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_vec, g_att, g_ch):
        emb, h0, memory, keys, W_ih, b_ih, W_hh, b_hh, W_1, v, W_c = ctx.saved_tensors
        x, Wih, W1hh, Wc, mem, Hs, QG, RZ, N, SG, ATT, CH, VEC = ctx.buffers
        del ctx.buffers
        T, B, H = N.shape
        S, A, D, DO, E, dt = SG.size(2), SG.size(3), mem.size(2), VEC.size(2), x.size(2), x.dtype
        W_feed = Wih[:, E:]
        W_1c = W1hh[:A] * 2  # (A, H) 4 W_1: 1 - tanh^2 = 4 sg (1 - sg); W1hh holds 2 W_1
        Whh = W1hh[A:]
        v_ = v.to(dt)
        G = (g_vec if g_vec is not None else VEC.new_zeros(B, T, DO)).to(dt).transpose(0, 1)
        GA = None if g_att is None else g_att.to(ATT.dtype).transpose(0, 1)  # (T, B, S)
        # (T, B, D + H)
        GC = None if g_ch is None or g_ch.numel() == 0 else g_ch.to(dt).transpose(0, 1)
        # per-step factors, computed for all steps at once
        dVEC = 1 - VEC * VEC  # tanh'
        R, Z, dN, dZ, dR = _gru_factors(RZ, N, Hs[:T], QG[:T, :, A + 2 * H:])
        DGI, DGH = x.new_empty(T, B, 3 * H), x.new_empty(T, B, 3 * H)
        DPV = x.new_empty(T, B, DO)  # gradient at W_c's output (before tanh)
        DQ = x.new_empty(T, B, A)  # gradient at W_1 s_i, divided by 4
        DE = torch.empty_like(ATT)  # at the scores
        DCH = x.new_empty(T, B, D + H)  # at [c_i; s_i]
        d_keys = SG.new_zeros(B, S, A)  # sum_t de_t sg_t (1 - sg_t), times 4 v at the end
        dh = x.new_zeros(B, H)
        dvec_next = None  # gradient reaching h~_t through step t+1's input feeding
        for t in range(T - 1, -1, -1):
            dv = G[t] if dvec_next is None else G[t] + dvec_next
            dpv = torch.mul(dv, dVEC[t], out=DPV[t])  # (B, DO)
            dch = torch.mm(dpv, Wc, out=DCH[t])  # (B, D + H)
            if GC is not None:  # [c_i; s_i] also feeds p_gen
                dch.add_(GC[t])
            dh = dh + dch[:, D:]
            a = ATT[t]
            da = torch.bmm(mem, dch[:, :D].unsqueeze(2)).squeeze(2).to(a.dtype)  # (B, S)
            if GA is not None:
                da = da + GA[t]
            de = torch.mul(a, da - (a * da).sum(-1, keepdim=True), out=DE[t])  # softmax backward
            # the gradient inside the tanh is de_ij v (1 - tanh^2): never formed; sum_j de_ij
            # = 0, so W_1 s_i gets v * sum_j de_ij 4 sg (1 - sg), and the keys the same per j
            sg = SG[t]
            q = torch.addcmul(sg, sg, sg, value=-1)  # sg (1 - sg), (B, S, A)
            de_ = de.to(dt)
            dq = torch.mul(torch.bmm(de_.unsqueeze(1), q).squeeze(1), v_, out=DQ[t])  # (B, A)
            d_keys.addcmul_(de_.unsqueeze(2), q)
            dh = torch.addmm(dh, dq, W_1c)
            dgi, dgh = DGI[t], DGH[t]
            _gru_step_backward(dh, R[t], dN[t], dZ[t], dR[t], dgi, dgh)
            dh = torch.addmm(dh * Z[t], dgh, Whh)  # to s_{i-1}
            if ctx.input_feeding and t > 0:
                dvec_next = dgi @ W_feed  # (B, DO)
        # every weight gradient: one product over all T x B rows
        dGI, dGH = DGI.view(T * B, 3 * H), DGH.view(T * B, 3 * H)
        xs = x.transpose(0, 1).reshape(T * B, E)
        dW_ih = torch.empty_like(Wih)
        torch.mm(dGI.t(), xs, out=dW_ih[:, :E])
        if ctx.input_feeding:  # step t read h~_{t-1} (zeros at t = 0)
            torch.mm(DGI[1:].reshape(-1, 3 * H).t(), VEC[:-1].reshape(-1, DO), out=dW_ih[:, E:])
        d_emb = (dGI @ Wih[:, :E]).view(T, B, E).transpose(0, 1)
        dW_hh = dGH.t() @ Hs[:T].reshape(T * B, H)
        dW_1 = 4 * (DQ.view(T * B, A).t() @ Hs[1:].reshape(T * B, H))
        dW_c = DPV.view(T * B, DO).t() @ CH.view(T * B, -1)
        dv_a = 2 * (DE.to(dt).view(-1) @ SG.view(-1, A))  # sum de tanh = 2 sum de sg (sum de = 0)
        d_keys.mul_(4 * v_)  # (B, S, A)
        d_mem = torch.bmm(ATT.to(dt).permute(1, 2, 0), DCH[..., :D].transpose(0, 1))  # (B, S, D)

        def like(g, ref):
            return None if g is None or not ref.requires_grad else g.to(ref.dtype)

        return (
            like(d_emb, emb), like(dh, h0), like(d_mem, memory), like(d_keys, keys), None,
            like(dW_ih, W_ih), like(dGI.sum(0), b_ih), like(dW_hh, W_hh), like(dGH.sum(0), b_hh),
            like(dW_1, W_1), like(dv_a, v), like(dW_c, W_c), None, None, None,
        )


def fused_decode(emb: Tensor, h0: Tensor, memory: Tensor, keys: Tensor, src_pad_mask: Tensor, cell,
                 W_1: Tensor, v: Tensor, W_c: Tensor, input_feeding: bool, want_ch: bool = False
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
    """emb (B, T, E) embedded targets; h0 (B, H) initial state; memory (B, S, D) encoder
    states; keys (B, S, A) = W_2 h_j + b; src_pad_mask (B, S); cell an ``nn.GRUCell``; W_1
    (A, H), v (A,), W_c (DO, D + H) -> attentional vectors h~ (B, T, DO), weights (B, T, S)
    and, with ``want_ch``, [c_i; s_i] (B, T, D + H), the contexts and decoder states (else None)."""
    dtype = _compute_dtype(emb, cell.weight_ih)
    with torch.autocast(emb.device.type, enabled=False):
        vec, attn, ch = FusedGRUAttention.apply(
            emb, h0, memory, keys, src_pad_mask, cell.weight_ih, cell.bias_ih, cell.weight_hh,
            cell.bias_hh, W_1, v, W_c, input_feeding, dtype, want_ch)
    return vec, attn, (ch if want_ch else None)


class FusedGRUEncoder(torch.autograd.Function):
    """One GRU layer over padded sequences, both directions in one loop (the reverse direction
    reads each sentence reversed within its own length): outputs are zero at padding and a
    row's final state is its state after its last (reversed: first) word, as with ``nn.GRU``
    over a packed batch. Arguments as in :func:`fused_gru_encode`."""

    @staticmethod
    def forward(ctx, x, lens, rev, W_ih, W_hh, b_ih, b_hh, dtype: torch.dtype):
        # x (B, S, E); lens (B,); rev (B, S) the reversing gather index; W_ih (K, 3H, E),
        # W_hh (K, 3H, H), b_ih and b_hh (K, 3H) for K = 1 or 2 directions
        B, S, E = x.shape
        K, _, H = W_hh.shape
        cast = dict(dtype=dtype)
        Wih, Whh, bih, bhh = (w.to(**cast) for w in (W_ih, W_hh, b_ih, b_hh))
        xs = x.to(**cast)
        X = torch.stack([xs, xs.gather(1, rev.unsqueeze(2).expand(-1, -1, E))][:K])  # (K, B, S, E)
        XT = X.transpose(1, 2).reshape(K, S * B, E)  # time-major rows (t, b)
        GI = torch.baddbmm(bih.unsqueeze(1), XT, Wih.transpose(1, 2)).view(K, S, B, 3 * H)
        M = (torch.arange(S, device=x.device).unsqueeze(1) < lens.to(x.device)).to(dtype)  # S, B
        Hs = xs.new_empty(K, S + 1, B, H)  # state before step t (after: index t + 1)
        Hs[:, 0] = 0
        OUT = xs.new_empty(K, S, B, H)  # the new state of each step, before masking
        RZ = xs.new_empty(K, S, B, 2 * H)
        N, GHN = xs.new_empty(K, S, B, H), xs.new_empty(K, S, B, H)
        bhh_ = bhh.unsqueeze(1)  # (K, 1, 3H)
        WhhT = Whh.transpose(1, 2)  # (K, H, 3H)
        for t in range(S):
            h = Hs[:, t]
            gi = GI[:, t]
            gh = torch.baddbmm(bhh_, h, WhhT)  # (K, B, 3H)
            GHN[:, t] = gh[..., 2 * H:]  # for the backward
            new = _gru_step(gi, gh, h, RZ[:, t], N[:, t], OUT[:, t])  # (K, B, H)
            torch.addcmul(h, M[t].unsqueeze(1), new - h, out=Hs[:, t + 1])  # frozen past the end
        out = OUT * M.unsqueeze(2)  # (K, S, B, H) zero at padding
        ctx.save_for_backward(x, W_ih, W_hh, b_ih, b_hh)
        ctx.buffers = (rev, X, Wih, Whh, M, Hs, RZ, N, GHN)
        fwd = out[0].transpose(0, 1)  # (B, S, H)
        outs = [fwd]
        if K == 2:
            idx = rev.unsqueeze(2).expand(-1, -1, H)
            outs.append(out[1].transpose(0, 1).gather(1, idx))  # back to source order
        return torch.cat(outs, 2), Hs[:, S].clone()  # (B, S, K H), final (K, B, H)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_final):
        x, W_ih, W_hh, b_ih, b_hh = ctx.saved_tensors
        rev, X, Wih, Whh, M, Hs, RZ, N, GHN = ctx.buffers
        del ctx.buffers
        K, S, B, H = N.shape
        E = X.size(3)
        dt = X.dtype
        if g_out is None:
            g_out = Hs.new_zeros(B, S, K * H)
        g_out = g_out.to(dt)
        G = [g_out[..., :H]]
        if K == 2:
            G.append(g_out[..., H:].gather(1, rev.unsqueeze(2).expand(-1, -1, H)))
        GO = torch.stack(G).transpose(1, 2) * M.unsqueeze(2)  # (K, S, B, H) at the new state
        dh = Hs.new_zeros(K, B, H) if g_final is None else g_final.to(dt).clone()
        DGI, DGH = Hs.new_empty(K, S, B, 3 * H), Hs.new_empty(K, S, B, 3 * H)
        R, Z, dN, dZ, dR = _gru_factors(RZ, N, Hs[:, :S], GHN)
        for t in range(S - 1, -1, -1):
            m = M[t].unsqueeze(1)  # (B, 1)
            d_new = (dh + GO[:, t]) * m  # rows past their end get nothing
            dgi, dgh = DGI[:, t], DGH[:, t]
            _gru_step_backward(d_new, R[:, t], dN[:, t], dZ[:, t], dR[:, t], dgi, dgh)
            # to h_{t-1}: through z, through W_hh, and unchanged where the row has ended
            dh = torch.baddbmm(dh * (1 - m) + d_new * Z[:, t], dgh, Whh)
        dGI, dGH = DGI.view(K, S * B, 3 * H), DGH.view(K, S * B, 3 * H)
        XT = X.transpose(1, 2).reshape(K, S * B, E)
        dW_ih = torch.bmm(dGI.transpose(1, 2), XT)
        dW_hh = torch.bmm(dGH.transpose(1, 2), Hs[:, :S].reshape(K, S * B, H))
        dX = torch.bmm(dGI, Wih).view(K, S, B, E).transpose(1, 2)  # (K, B, S, E)
        dx = dX[0]
        if K == 2:
            dx = dx + dX[1].gather(1, rev.unsqueeze(2).expand(-1, -1, E))
        return (dx.to(x.dtype) if x.requires_grad else None, None, None, dW_ih.to(W_ih.dtype),
                dW_hh.to(W_hh.dtype), dGI.sum(1).to(b_ih.dtype), dGH.sum(1).to(b_hh.dtype), None)


def fused_gru_encode(x: Tensor, lens: Tensor, rnn) -> tuple[Tensor, Tensor]:
    """x (B, S, E) embedded source, lens (B,) lengths, rnn a one-layer ``nn.GRU``
    (batch_first, either direction count) -> outputs (B, S, dirs H) zero at padding, final
    state (dirs, B, H): what ``nn.GRU`` gives on the packed batch."""
    dtype = _compute_dtype(x, rnn.weight_ih_l0)
    B, S, _ = x.shape
    lens = lens.to(x.device)
    pos = torch.arange(S, device=x.device).unsqueeze(0)  # (1, S)
    rev = torch.where(pos < lens.unsqueeze(1), lens.unsqueeze(1) - 1 - pos, pos)  # (B, S)
    sfx = ["_l0", "_l0_reverse"][: 2 if rnn.bidirectional else 1]
    W_ih, W_hh, b_ih, b_hh = (
        torch.stack([getattr(rnn, f"{name}{s}") for s in sfx])
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )
    with torch.autocast(x.device.type, enabled=False):
        return FusedGRUEncoder.apply(x, lens, rev, W_ih, W_hh, b_ih, b_hh, dtype)
