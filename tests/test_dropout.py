"""attendo's CPU dropout: same distribution as nn.Dropout, repeatable with the seed, exact
gradient through the kept elements."""

import pytest
import torch

from attendo.model.dropout import Dropout, keep_multiplier


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drop_rate_and_scale(p, dtype):
    torch.manual_seed(0)
    m = keep_multiplier(torch.Size([200_000]), p, dtype, torch.device("cpu"))
    dropped = (m == 0).float().mean().item()
    assert abs(dropped - p) < 0.005  # 200k draws: std ~0.001
    kept = m[m != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-2)
    assert abs(m.float().mean().item() - 1.0) < 0.02  # expectation preserved


def test_odd_sizes_and_shapes():
    torch.manual_seed(0)
    for shape in [(1,), (3,), (5, 7), (2, 3, 5)]:
        m = keep_multiplier(torch.Size(shape), 0.5, torch.float32, torch.device("cpu"))
        assert m.shape == shape


def test_slices_are_independent():
    """Each 64-bit draw feeds 4 elements: neighbours must not be correlated."""
    torch.manual_seed(1)
    keep = keep_multiplier(torch.Size([400_000]), 0.5, torch.float32, torch.device("cpu")) > 0
    k = keep.view(-1, 4).float()
    both = (k[:, 0] * k[:, 1]).mean().item()
    assert abs(both - 0.25) < 0.01
    last = k[:, 3].mean().item()  # the top 16 bits of each word (sign bit included)
    assert abs(last - 0.5) < 0.01


def test_seed_repeatable_and_eval_identity():
    d = Dropout(0.2)
    x = torch.randn(4, 50)
    torch.manual_seed(3)
    a = d(x)
    torch.manual_seed(3)
    b = d(x)
    assert torch.equal(a, b)
    d.eval()
    assert torch.equal(d(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_gradient_is_the_mask():
    torch.manual_seed(0)
    x = torch.randn(10, 100, requires_grad=True)
    y = Dropout(0.3)(x)
    y.sum().backward()
    expected = torch.where(y == 0, 0.0, 1 / 0.7)
    assert torch.allclose(x.grad, expected)


def test_rejects_bad_probability():
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
