"""The fused label-smoothed cross-entropy equals the autograd formulation, values and grads."""

import pytest
import torch
import torch.nn.functional as F

import attendo.model.loss as loss_module
from attendo.model.loss import smoothed_cross_entropy


@pytest.mark.parametrize("block", [1 << 20, 53 * 5, 7])  # one block; 8 blocks (last partial); row by row
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_matches_cross_entropy(eps, block, monkeypatch):
    monkeypatch.setattr(loss_module, "BLOCK_ELEMENTS", block)
    torch.manual_seed(0)
    logits = torch.randn(37, 53, dtype=torch.float64, requires_grad=True)
    gold = torch.randint(0, 53, (37,))
    loss, nll = smoothed_cross_entropy(logits, gold, eps)
    ref = F.cross_entropy(logits, gold, label_smoothing=eps, reduction="sum")
    ref_nll = F.cross_entropy(logits, gold, reduction="sum")
    assert torch.allclose(loss, ref.float(), atol=1e-4)
    assert torch.allclose(nll, ref_nll.float(), atol=1e-4)
    assert not nll.requires_grad
    (g,) = torch.autograd.grad(loss * 2.5, logits)
    (g_ref,) = torch.autograd.grad(ref * 2.5, logits)
    assert torch.allclose(g, g_ref, atol=1e-5)


def test_bf16_logits_get_bf16_grad(device):
    """bf16 logits (what autocast gives the output layer) on the training device: an fp32
    loss, a bf16 gradient on the same device, both equal to the fp32 reference's."""
    torch.manual_seed(0)  # drawn on the CPU, then moved: the same numbers on every device
    logits = torch.randn(8, 20).bfloat16().to(device).requires_grad_()
    gold = torch.randint(0, 20, (8,)).to(device)
    loss, nll = smoothed_cross_entropy(logits, gold, 0.1)
    assert loss.dtype == nll.dtype == torch.float32 and loss.device == device
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16 and logits.grad.device == device
    ref_logits = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(ref_logits, gold, label_smoothing=0.1, reduction="sum")
    assert abs(loss.item() - ref.item()) < 1e-3
    ref.backward()
    # the fp32 gradient rounded once to bf16 (8 mantissa bits: 2**-8 relative) is what we get
    torch.testing.assert_close(logits.grad.float().cpu(), ref_logits.grad.cpu(),
                               atol=1e-3, rtol=2**-8)
