"""The linear adapter's fused forward (2 GEMMs with their bias inside + one scaled add) equals
the textbook x + s·up(dropout(down(x))) in fp32 and bf16, and dispatches 3 operators."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from zeroi2v.models.adapter_layers import GeluAdapter, LinearAdapter


def _reference(adapter: LinearAdapter, x: torch.Tensor) -> torch.Tensor:
    """The unfused formula, as the adapter computed it before."""
    hidden = adapter.activation(adapter.down(x))
    return x + adapter.scale * adapter.up(adapter.dropout(hidden))


def _adapter(cls=LinearAdapter, scale: float = 0.5) -> LinearAdapter:
    torch.manual_seed(0)
    adapter = cls(64, 16, scale=scale)
    torch.nn.init.normal_(adapter.up.weight, std=0.1)  # not the identity start: a real branch
    torch.nn.init.normal_(adapter.up.bias, std=0.1)
    return adapter


def _out_and_grads(adapter, fn, x):
    adapter.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = fn(x)
    out.float().square().sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in adapter.parameters())]


@pytest.mark.parametrize("cls", [LinearAdapter, GeluAdapter])
def test_fused_equals_reference_in_fp32(cls):
    adapter = _adapter(cls)
    x = torch.randn(2, 4, 10, 64).transpose(1, 2)  # 4-D and not contiguous: any layout works
    got = _out_and_grads(adapter, adapter, x)
    want = _out_and_grads(adapter, lambda t: _reference(adapter, t), x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["autocast", "bf16 module"])
def test_fused_equals_reference_in_bf16(mode):
    """bf16 as autocast runs it and as DeepSpeed does (module and inputs cast), against the
    unfused formula in the same precision: the GEMMs run in bf16 in both, only the rounding of
    the scaled add differs (one rounding instead of two), so bf16's resolution bounds it."""
    adapter, x = _adapter(), torch.randn(6, 50, 64)
    if mode == "bf16 module":
        adapter, x = adapter.bfloat16(), x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        assert adapter.down(x).dtype == torch.bfloat16
        got = _out_and_grads(adapter, adapter, x)
        want = _out_and_grads(adapter, lambda t: _reference(adapter, t), x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=1.6e-2, atol=1e-2)


class _Ops(TorchDispatchMode):
    """Operators reaching the kernels, views excluded (they move no data)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _ops(fn, x) -> list[str]:
    with torch.no_grad(), _Ops() as mode:
        fn(x)
    return mode.names


def test_forward_is_two_gemms_with_bias_and_one_add():
    adapter = _adapter()
    x = torch.randn(2, 10, 64)
    assert _ops(adapter, x) == ["addmm", "addmm", "add"]
    assert _ops(lambda t: _reference(adapter, t), x) == ["addmm", "addmm", "mul", "add"]


def test_merge_of_the_fused_adapter_stays_exact():
    adapter = _adapter().double().eval()
    matrix, shift = adapter.affine()
    x = torch.randn(3, 7, 64, dtype=torch.float64)
    torch.testing.assert_close(adapter(x), F.linear(x, matrix, shift), rtol=0, atol=1e-12)
