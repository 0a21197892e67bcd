"""StackedLinear: frozen stacks fused and exact, per-sample routing, gradients, no host syncs."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_fp32_equivalent, fp32_tolerance
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from brainstacks_pl import MoELoRA, StackConfig, StackContext, StackedLinear
from brainstacks_pl.errors import StackFileError
from brainstacks_pl.layers.stacked_linear import UnsupportedLayerError

D_IN, D_OUT = 16, 24
DEPTH = D_IN + 4 * 3 * 4
"""Accumulation depth of a layer with up to 4 stacks of 3 experts x rank 4 (tests/numerics.py)."""
LEAK_TOL = fp32_tolerance(torch.ones(()), D_OUT + DEPTH)
"""Relative component along a basis left by float32 rounding; without the projection it is O(1)."""
DOMAINS = ["chat", "code", "math"]


def _config(**overrides) -> StackConfig:
    return StackConfig(**{"experts": 3, "rank": 4, "frozen_dtype": "float32", **overrides})


def _stack_tensors(config: StackConfig, seed: int) -> dict[str, torch.Tensor]:
    """A trained-looking stack: MoELoRA's init for in_proj, a random nonzero B."""
    stack = MoELoRA(D_IN, D_OUT, config, generator=torch.Generator().manual_seed(seed))
    B = 0.3 * torch.randn(stack.B.shape, generator=torch.Generator().manual_seed(seed + 100))
    return {"in_proj": stack.in_proj.detach().clone(), "B": B}


def _moe(config: StackConfig, tensors: dict[str, torch.Tensor]) -> MoELoRA:
    stack = MoELoRA(D_IN, D_OUT, config).eval()
    with torch.no_grad():
        stack.in_proj.copy_(tensors["in_proj"])
        stack.B.copy_(tensors["B"])
    return stack


def _layer(frozen=(), config: StackConfig | None = None, seed: int = 0) -> StackedLinear:
    """A StackedLinear on a seeded nn.Linear with frozen stacks for the given domains (seeds 0, 1, ...)."""
    config = config or _config()
    torch.manual_seed(seed)
    layer = StackedLinear(nn.Linear(D_IN, D_OUT), config, StackContext(domains=list(DOMAINS)), name="blocks.0.q_proj")
    for i, domain in enumerate(frozen):
        layer.append_frozen(_stack_tensors(config, seed=i), domain)
    return layer.eval()


def _add_trained_active(layer: StackedLinear, domain: str, seed: int = 7) -> MoELoRA:
    stack = layer.add_active(domain, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        stack.B.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(seed + 1))
    return stack


def _route(layer: StackedLinear, weights: torch.Tensor) -> None:
    layer.context.mode, layer.context.weights = "routed", weights


class _OpRecorder(TorchDispatchMode):
    def __init__(self, forbid: tuple[str, ...] = ()):
        super().__init__()
        self.ops: list[str] = []
        self.forbid = forbid

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket.__name__)
        if name in self.forbid:
            raise AssertionError(f"forbidden op {func} (a host sync) inside forward")
        self.ops.append(name)
        return func(*args, **(kwargs or {}))


MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addmv", "mv"}


def test_new_active_stack_is_exact_noop():
    layer = _layer(frozen=["chat"])
    x = torch.randn(2, 5, D_IN)
    before = layer(x)
    layer.add_active("code").train()
    assert torch.equal(layer(x), before)


def test_frozen_stacks_equal_sum_of_individual_stacks():
    config = _config()
    layer = _layer(frozen=["chat", "code", "chat"], config=config)
    x = torch.randn(2, 5, D_IN)
    expected = layer.base_layer(x) + sum(_moe(config, _stack_tensors(config, seed=i))(x).delta for i in range(3))
    assert_fp32_equivalent(layer(x), expected, DEPTH, "frozen sum")


def test_frozen_stacks_are_buffers_outside_state_dict():
    layer = _layer(frozen=["chat", "code"], config=_config(frozen_dtype="bfloat16"))
    assert layer.frozen_in.dtype == layer.frozen_Bt.dtype == torch.bfloat16
    assert layer.frozen_in.shape == (2, 3 * 4 + 3, D_IN) and layer.frozen_Bt.shape == (2, 3 * 4, D_OUT)
    assert [name for name, _ in layer.named_parameters()] == ["base_layer.weight", "base_layer.bias"]
    assert set(layer.state_dict()) == {"base_layer.weight", "base_layer.bias"}
    assert layer.frozen_domains == ["chat", "code"]


@pytest.mark.parametrize("mode", ["ungated", "routed"])
def test_frozen_stacks_computed_together(mode):
    counts = {}
    for num in (1, 5):
        layer = _layer(frozen=[DOMAINS[i % 3] for i in range(num)])
        if mode == "routed":
            _route(layer, torch.rand(2, len(DOMAINS)))
        with torch.no_grad(), _OpRecorder() as recorder:
            layer(torch.randn(2, 5, D_IN))
        counts[num] = sorted(op for op in recorder.ops if op in MATMULS)
    assert counts[1] == counts[5]
    assert len(counts[1]) <= 3  # base + one A GEMM + one B GEMM


def test_routed_per_sample_equals_each_sample_alone():
    layer = _layer(frozen=["chat", "code", "chat"])
    _add_trained_active(layer, "math")
    x = torch.randn(3, 5, D_IN)
    weights = torch.tensor([[1.0, 0.0, 0.3], [0.2, 0.9, 0.0], [0.0, 0.0, 1.0]])
    _route(layer, weights)
    batched = layer(x)
    for i in range(3):
        _route(layer, weights[i : i + 1])
        assert_fp32_equivalent(batched[i : i + 1], layer(x[i : i + 1]), DEPTH, f"sample {i}")
    # Routing weights really act per sample: sample 2 only sees the math (active) stack.
    layer.context.mode = "isolated"
    layer.context.active_domains = frozenset({"math"})
    assert_fp32_equivalent(batched[2:], layer(x[2:]), DEPTH, "math only")


def test_routed_with_all_ones_equals_ungated():
    layer = _layer(frozen=["chat", "code"])
    _add_trained_active(layer, "math")
    x = torch.randn(2, 5, D_IN)
    ungated = layer(x)
    _route(layer, torch.ones(2, len(DOMAINS)))
    assert torch.equal(layer(x), ungated)


def test_routed_with_zero_weights_equals_base():
    layer = _layer(frozen=["chat", "code"])
    _add_trained_active(layer, "math")
    x = torch.randn(2, 5, D_IN)
    _route(layer, torch.zeros(2, len(DOMAINS)))
    torch.testing.assert_close(layer(x), layer.base_layer(x))


def test_routed_weights_must_match_batch():
    layer = _layer(frozen=["chat"])
    _route(layer, torch.ones(3, len(DOMAINS)))
    with pytest.raises(ValueError, match="do not match a batch"):
        layer(torch.randn(2, 5, D_IN))
    _route(layer, None)
    with pytest.raises(RuntimeError, match="weights"):
        layer(torch.randn(2, 5, D_IN))


def test_no_host_sync_in_routed_forward_and_backward():
    layer = _layer(frozen=["chat", "code", "chat"]).train()
    _add_trained_active(layer, "math")
    _route(layer, torch.rand(2, len(DOMAINS)))
    x = torch.randn(2, 5, D_IN, requires_grad=True)
    with _OpRecorder(forbid=("_local_scalar_dense", "is_nonzero")):
        layer(x).square().sum().backward()
    layer.context.mode, layer.context.active_domains = "isolated", frozenset({"chat", "math"})  # non-contiguous pick
    with torch.no_grad(), _OpRecorder(forbid=("_local_scalar_dense", "is_nonzero")):
        layer(x)


def test_input_gradient_flows_through_frozen_stacks():
    x = torch.randn(2, 5, D_IN)
    upstream = torch.randn(2, 5, D_OUT)

    def input_grad(layer, mode="ungated"):
        layer.context.mode = mode
        xg = x.clone().requires_grad_(True)
        (layer(xg) * upstream).sum().backward()
        return xg.grad

    base_grad = input_grad(_layer(), "base")
    exact = input_grad(_layer(frozen=["chat", "code"]))
    assert not torch.allclose(exact, base_grad, atol=1e-4)
    # It is the exact gradient of base + frozen stacks (autograd through the plain per-stack modules).
    config = _config()
    xg = x.clone().requires_grad_(True)
    stacks = [_moe(config, _stack_tensors(config, seed=i)) for i in range(2)]
    ref = _layer().base_layer(xg) + sum(stack(xg).delta for stack in stacks)
    (ref * upstream).sum().backward()
    assert_fp32_equivalent(exact, xg.grad, 2 * DEPTH, "input gradient")


def test_detach_frozen_input_stops_gradient_only_at_frozen_stacks():
    x = torch.randn(2, 5, D_IN)
    upstream = torch.randn(2, 5, D_OUT)
    layer = _layer(frozen=["chat", "code"], config=_config(detach_frozen_input=True))
    active = _add_trained_active(layer, "math").eval()
    xg = x.clone().requires_grad_(True)
    (layer(xg) * upstream).sum().backward()
    # Expected: base path + active stack path, nothing from the frozen stacks.
    xr = x.clone().requires_grad_(True)
    ((layer.base_layer(xr) + active(xr).delta) * upstream).sum().backward()
    assert_fp32_equivalent(xg.grad, xr.grad, 2 * DEPTH, "input gradient without frozen stacks")
    # ... while the forward value still includes the frozen stacks.
    assert not torch.allclose(layer(x), layer.base_layer(x) + active(x).delta, atol=1e-4)


def test_frozen_stacks_get_no_gradient_active_does():
    layer = _layer(frozen=["chat"]).train()
    active = _add_trained_active(layer, "code")
    layer(torch.randn(2, 5, D_IN)).sum().backward()
    assert not layer.frozen_in.requires_grad and not layer.frozen_Bt.requires_grad
    assert active.B.grad is not None and active.B.grad.abs().sum() > 0
    assert layer.base_layer.weight.grad is not None  # nn.Linear here is not frozen by StackedLinear itself


def test_unsupported_module_raises_naming_it():
    with pytest.raises(UnsupportedLayerError, match=r"blocks\.3\.conv.*Conv2d"):
        StackedLinear(nn.Conv2d(3, 3, 1), _config(), StackContext(domains=DOMAINS), name="blocks.3.conv")
    with pytest.raises(UnsupportedLayerError, match="embed"):
        StackedLinear(nn.Embedding(10, 4), _config(), StackContext(domains=DOMAINS), name="embed")


def test_append_frozen_checks_shapes():
    layer = _layer()
    tensors = _stack_tensors(_config(), seed=0)
    tensors["B"] = tensors["B"][:-1]
    with pytest.raises(StackFileError, match=r"'B' has shape \(23, 12\), this model needs \(24, 12\)"):
        layer.append_frozen(tensors, "chat")
    with pytest.raises(StackFileError, match="lacks 1 tensors .*in_proj"):
        layer.append_frozen({"B": tensors["B"]}, "chat")
    assert layer.num_frozen == 0


def test_one_active_stack_at_a_time():
    layer = _layer()
    layer.add_active("chat")
    with pytest.raises(RuntimeError, match="already has an active stack"):
        layer.add_active("code")
    layer.freeze_active()
    with pytest.raises(RuntimeError, match="no active stack"):
        layer.freeze_active()


def test_freeze_keeps_the_trained_function():
    layer = _layer(frozen=["chat"])
    _add_trained_active(layer, "code")
    x = torch.randn(2, 5, D_IN)
    before = layer(x)
    tensors = layer.freeze_active()
    assert layer.active is None and layer.frozen_domains == ["chat", "code"]
    assert tensors["in_proj"].shape == (3 * 4 + 2 * 3, D_IN)  # file keeps W_n; the frozen buffer drops it
    assert_fp32_equivalent(layer(x), before, DEPTH, "after freeze")


def test_delta_mode_freeze_folds_the_projection():
    layer = _layer(frozen=["chat"])
    basis, _ = torch.linalg.qr(torch.randn(D_OUT, 5, generator=torch.Generator().manual_seed(3)))
    layer.set_null_basis(basis)
    layer.null_space_mode = "delta"
    active = _add_trained_active(layer, "code")
    x = torch.randn(2, 5, D_IN)
    projected = layer(x)
    frozen_before = projected - active(x, basis).delta
    assert torch.linalg.norm(active(x, basis).delta @ basis) / torch.linalg.norm(active(x, basis).delta) < LEAK_TOL
    tensors = layer.freeze_active()
    assert torch.linalg.norm(basis.T @ tensors["B"]) / torch.linalg.norm(tensors["B"]) < LEAK_TOL
    frozen = layer(x)
    assert_fp32_equivalent(frozen, projected, DEPTH, "folded projection")
    stack_delta = frozen - frozen_before
    assert torch.linalg.norm(stack_delta @ basis) / torch.linalg.norm(stack_delta) < LEAK_TOL


def test_null_basis_checks_rows():
    layer = _layer()
    with pytest.raises(ValueError, match="expected d_out=24"):
        layer.set_null_basis(torch.zeros(D_IN, 2))
    layer.set_null_basis(None)
    assert layer.null_basis.shape == (D_OUT, 0)
