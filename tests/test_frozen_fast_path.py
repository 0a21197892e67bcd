"""The frozen-stack fast path: cached compute operands, folded LoRA scale, routed mode on every family."""

from __future__ import annotations

import pytest
import torch
from conftest import random_stack_tensors
from numerics import TINY_MODEL_DEPTH, assert_fp32_equivalent, assert_matches_float64
from test_stacked_linear import D_IN, D_OUT, DOMAINS, _config, _layer, _OpRecorder, _stack_tensors
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
)

from brainstacks_pl import BrainstacksModel, MoELoRA, StackConfig, StackedLinear

# One layer: D_IN products in each GEMM row, plus up to 3 stacks x 12 rank columns in the B GEMM.
LAYER_DEPTH = D_IN + 3 * 12 + 4


def _float64_reference(layer: StackedLinear, x: torch.Tensor) -> torch.Tensor:
    """base + every selected frozen stack, one plain MoELoRA each, all in float64 (stored values upcast)."""
    config = layer.config
    out = nn.functional.linear(x.double(), layer.base_layer.weight.double(), layer.base_layer.bias.double())
    for i in layer.context.selection(layer.frozen_domains):
        stack = MoELoRA(D_IN, D_OUT, config).double().eval()
        with torch.no_grad():
            stack.in_proj[: config.experts * (config.rank + 1)].copy_(layer.frozen_in[i])
            stack.in_proj[config.experts * (config.rank + 1) :].zero_()
            stack.B.copy_(layer.frozen_Bt[i].T)
        out = out + stack(x.double()).delta
    return out


def test_half_precision_stacks_are_not_cast_per_call():
    layer = _layer(frozen=["chat", "code"], config=_config(frozen_dtype="bfloat16"))
    x = torch.randn(2, 5, D_IN)
    first = layer(x)
    with torch.no_grad(), _OpRecorder() as recorder:
        second = layer(x)
    assert torch.equal(first, second)
    assert not {"_to_copy", "copy_", "index_select"} & set(recorder.ops), recorder.ops
    assert_matches_float64(first, _float64_reference(layer, x), LAYER_DEPTH, "cached bf16 stacks")


def test_input_gradient_through_cached_stacks_matches_float64():
    layer = _layer(frozen=["chat", "code", "math"], config=_config(frozen_dtype="bfloat16")).train()
    x = torch.randn(3, 4, D_IN, generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(3, 4, D_OUT, generator=torch.Generator().manual_seed(2))
    for _ in range(2):  # the second pass runs on the cache built by the first
        xg = x.clone().requires_grad_(True)
        (layer(xg) * upstream).sum().backward()
    x64 = x.double().requires_grad_(True)
    (_float64_reference(layer, x64) * upstream.double()).sum().backward()
    assert_matches_float64(xg.grad, x64.grad, 2 * LAYER_DEPTH, "input gradient")


def test_folded_scale_is_bit_identical_for_a_power_of_two():
    # isolated {chat, math} out of [chat, code, math] gathers a copy (scale folded into B);
    # a layer holding only [chat, math] uses views of its buffers (scale on the gates).
    config = _config()
    assert config.scale == 8.0
    gathered = _layer(frozen=["chat", "code", "math"], config=config)
    gathered.context.mode, gathered.context.active_domains = "isolated", frozenset({"chat", "math"})
    viewed = _layer(config=config)
    for seed, domain in ((0, "chat"), (2, "math")):
        viewed.append_frozen(_stack_tensors(config, seed=seed), domain)
    x = torch.randn(2, 5, D_IN)
    assert torch.equal(gathered(x), viewed(x))
    assert next(iter(gathered._operand_cache.values())).scale == 1.0
    assert next(iter(viewed._operand_cache.values())).scale == config.scale


def test_folded_scale_other_than_a_power_of_two_is_still_exact_to_rounding():
    layer = _layer(frozen=["chat", "code"], config=_config(frozen_dtype="bfloat16", alpha=10.0))
    x = torch.randn(2, 5, D_IN)
    assert_matches_float64(layer(x), _float64_reference(layer, x), LAYER_DEPTH, "after a change")


def test_cache_follows_stacks_selection_and_to():
    layer = _layer(frozen=["chat"], config=_config(frozen_dtype="bfloat16"))
    x = torch.randn(2, 5, D_IN)
    layer(x)
    layer.append_frozen(_stack_tensors(layer.config, seed=1), "code")
    assert_matches_float64(layer(x), _float64_reference(layer, x), LAYER_DEPTH, "after a change")
    layer.context.mode, layer.context.active_domains = "isolated", frozenset({"code"})
    assert_matches_float64(layer(x), _float64_reference(layer, x), LAYER_DEPTH, "after a change")
    layer.context.mode = "ungated"
    layer.to(torch.float64)  # buffers move; the cache must not survive in float32
    assert not layer._operand_cache
    torch.testing.assert_close(
        layer(x.double()), _float64_reference(layer, x), atol=1e-12, rtol=1e-12
    )  # float64 end to end
    layer.clear_frozen()
    assert torch.equal(layer(x.double()), layer.base_layer(x.double()))


def test_cache_built_under_inference_mode_does_not_break_training():
    layer = _layer(frozen=["chat"], config=_config(frozen_dtype="bfloat16")).train()
    x = torch.randn(2, 5, D_IN)
    with torch.inference_mode():  # Lightning's validation
        layer(x)
    xg = x.clone().requires_grad_(True)
    layer(xg).sum().backward()
    assert xg.grad is not None
    assert len(layer._operand_cache) == 1  # one copy serves both modes


def test_routed_flattened_rows_equal_batched_rows():
    layer = _layer(frozen=["chat", "code"])
    layer.add_active("math")
    with torch.no_grad():
        layer.active.B.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(5))
    layer.context.mode, layer.context.weights = "routed", torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.9, 0.0]])
    x = torch.randn(2, 5, D_IN)
    batched = layer(x)
    flat = layer(x.reshape(10, D_IN))  # OPT's MLP feeds [B*T, d]
    assert_fp32_equivalent(flat, batched.reshape(10, D_OUT), LAYER_DEPTH, "[B*T, d] vs [B, T, d]")


# ---------------------------------------------------------------------------------------------- routed per family

_COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_FAMILIES = {
    "llama": (lambda: LlamaConfig(**_COMMON, num_key_value_heads=1), None),
    "mistral": (lambda: MistralConfig(**_COMMON, num_key_value_heads=1), None),
    "qwen2": (lambda: Qwen2Config(**_COMMON, num_key_value_heads=1), None),
    "phi3": (
        lambda: Phi3Config(**_COMMON, num_key_value_heads=2, pad_token_id=0),
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    ),
    "gpt_neox": (lambda: GPTNeoXConfig(**_COMMON), ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
    "opt": (
        lambda: OPTConfig(
            vocab_size=64,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
        ),
        ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    ),
    "gpt2": (
        lambda: GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64),
        ["c_attn", "c_proj", "c_fc"],
    ),
}


def _family_model(family: str) -> BrainstacksModel:
    hf_config, targets = _FAMILIES[family]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(hf_config()).eval()
    config = StackConfig(
        experts=2, rank=4, top_k=1, frozen_dtype="float32", **({"target_modules": targets} if targets else {})
    )
    model = BrainstacksModel(base, config, ["chat", "code"]).eval()
    for seed, domain in enumerate(("chat", "code")):
        model.load_frozen_stack(random_stack_tensors(model, seed, b_scale=0.3), domain)
    return model


@pytest.mark.parametrize("family", sorted(_FAMILIES))
def test_routed_per_sample_on_every_family(family):
    model = _family_model(family)
    ids = torch.randint(3, 64, (3, 6), generator=torch.Generator().manual_seed(2))
    weights = torch.tensor([[1.0, 0.0], [0.3, 0.8], [0.0, 1.0]])
    with torch.no_grad():
        with model.routed(weights):
            batched = model(ids).logits
        alone = []
        for i in range(3):
            with model.routed(weights[i : i + 1]):
                alone.append(model(ids[i : i + 1]).logits)
        with model.isolated("code"):
            code_only = model(ids[2:]).logits
        with model.ungated():
            ungated = model(ids).logits
    assert_fp32_equivalent(batched, torch.cat(alone), TINY_MODEL_DEPTH, f"{family}: batched vs each sample alone")
    assert_fp32_equivalent(batched[2:], code_only, TINY_MODEL_DEPTH, f"{family}: weights act per sample")
    assert (batched[1] - ungated[1]).abs().max() > 1e-2 * batched.abs().max()


def test_discovery_runs_only_the_stacks_its_routes_switch_on():
    from brainstacks_pl.routing.discovery import RouteLossOracle

    model = _family_model("llama")
    model.load_frozen_stack(random_stack_tensors(model, seed=3, b_scale=0.3), "code")  # stacks: [chat, code, code]
    ids = torch.randint(3, 64, (7,), generator=torch.Generator().manual_seed(4))
    labels = ids.clone()
    labels[:4] = -100  # a prompt: the LM head runs from the first answer token on
    items = [(ids, labels)]
    oracle = RouteLossOracle(model, pad_id=0, chat_domain=None, max_rows=1)
    layer = next(iter(model.layers.values()))
    seen = []
    for route in (frozenset({"code"}), frozenset({"chat"}), frozenset()):
        layer._operand_cache.clear()
        (loss,) = oracle.losses(items, [(0, route)])
        seen.append([key[0] for key in layer._operand_cache])
        weights = torch.tensor([[1.0 if d in route else 0.0 for d in model.domains]])
        with torch.no_grad(), model.routed(weights):  # every stack computed, zero weights included
            logits = model(ids[None]).logits
        expected = torch.nn.functional.cross_entropy(logits[0, :-1], labels[1:]).item()  # -100 ignored
        assert_fp32_equivalent(loss, expected, TINY_MODEL_DEPTH, f"route {sorted(route)}")
    assert seen == [[(1, 2)], [(0,)], []]


def test_uncached_frozen_stacks_keep_only_stored_tensors_for_backward():
    layer = _layer(frozen=["chat", "code", "math"], config=_config(frozen_dtype="bfloat16")).train()
    layer.context.cache_frozen = False
    x = torch.randn(3, 4, D_IN, generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(3, 4, D_OUT, generator=torch.Generator().manual_seed(2))
    saved = []
    xg = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(xg)
    (out * upstream).sum().backward()
    rows_in, rows_out = 3 * (3 * 4 + 3), 3 * 3 * 4  # three stacks' [A | W_r] rows and B columns
    stack_shapes = {(rows_in, D_IN), (D_IN, rows_in), (rows_out, D_OUT), (D_OUT, rows_out)}
    weights = [t for t in saved if tuple(t.shape) in stack_shapes]
    assert len(weights) == 2 and all(t.dtype == torch.bfloat16 for t in weights), [(t.shape, t.dtype) for t in weights]
    assert all(operands.w_in.dtype == torch.bfloat16 for operands in layer._operand_cache.values())
    x64 = x.double().requires_grad_(True)
    reference = _float64_reference(layer, x64)
    (reference * upstream.double()).sum().backward()
    assert_matches_float64(out, reference, LAYER_DEPTH, "uncached forward")
    assert_matches_float64(xg.grad, x64.grad, 2 * LAYER_DEPTH, "uncached input gradient")
    layer.context.mode, layer.context.active_domains = "isolated", frozenset({"chat", "math"})  # a gathered pick
    assert_matches_float64(layer(x), _float64_reference(layer, x), LAYER_DEPTH, "uncached gathered pick")


def test_routing_weights_written_in_place_are_read_again():
    layer = _layer(frozen=["chat", "code"])
    x = torch.randn(2, 5, D_IN)
    weights = torch.ones(2, len(DOMAINS))
    layer.context.mode, layer.context.weights = "routed", weights
    layer(x)
    weights.zero_()
    assert torch.equal(layer(x), layer.base_layer(x) + 0.0)
