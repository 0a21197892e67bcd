"""BrainstacksModel: no-op stacks, zero forgetting, routing modes, injection per architecture, NF4."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_llama, random_stack_tensors
from numerics import TINY_MODEL_DEPTH, assert_fp32_equivalent
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
)

from brainstacks_pl import BrainstacksModel, StackConfig, StackedLinear, load_base_model
from brainstacks_pl.storage import StackFileError, load_tensors, save_tensors

DOMAINS = ["chat", "code", "math"]
SMALL = dict(experts=2, rank=4, top_k=1)


def _ids(batch: int = 2, length: int = 12, seed: int = 0, vocab: int = 260) -> torch.Tensor:
    return torch.randint(4, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def _model(domains=DOMAINS, **config) -> BrainstacksModel:
    return BrainstacksModel(make_tiny_llama(), StackConfig(**{**SMALL, **config}), list(domains))


def _train(model: BrainstacksModel, ids: torch.Tensor, steps: int = 3, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps on every trainable parameter (the active stack only); returns the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(ids)
        loss = _lm_loss(out.logits, ids)
        (loss + model.stack_config.aux_coeff * out.aux_loss).backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def _logits(model: BrainstacksModel, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


# ---------------------------------------------------------------------------------------------- stacks


def test_new_stack_changes_no_output_bit():
    bare, ids = make_tiny_llama(), _ids()
    with torch.no_grad():
        expected = bare(ids).logits
    model = _model()
    assert torch.equal(_logits(model, ids), expected)
    model.add_stack("chat")
    assert torch.equal(_logits(model, ids), expected)
    model.train()  # gate noise on: still B = 0, still a no-op
    assert torch.equal(_logits(model, ids), expected)


def test_base_only_equals_bare_base():
    bare, ids = make_tiny_llama(), _ids()
    model = _model()
    model.load_frozen_stack(random_stack_tensors(model, 0), "chat")
    model.add_stack("code")
    with torch.no_grad():
        model.load_active_state_dict(random_stack_tensors(model, 1))
    with model.base_only():
        stacked_off = _logits(model, ids)
    with torch.no_grad():
        assert torch.equal(stacked_off, bare(ids).logits)
    assert not torch.allclose(_logits(model, ids), stacked_off)


def test_isolated_equals_a_model_that_only_had_those_stacks():
    ids = _ids()
    full = _model()
    for i, domain in enumerate(DOMAINS):
        full.load_frozen_stack(random_stack_tensors(full, i), domain)
    only_code = _model()
    only_code.load_frozen_stack(random_stack_tensors(only_code, 1), "code")
    with full.isolated("code"):
        assert torch.equal(_logits(full, ids), _logits(only_code, ids))
    first_two = _model()
    first_two.load_frozen_stack(random_stack_tensors(first_two, 0), "chat")
    first_two.load_frozen_stack(random_stack_tensors(first_two, 1), "code")
    with full.isolated(["chat", "code"]):
        assert torch.equal(_logits(full, ids), _logits(first_two, ids))


def test_frozen_stacks_bit_identical_after_training_and_zero_forgetting():
    ids = _ids()
    model = _model(frozen_dtype="bfloat16")
    model.add_stack("chat", seed=0)
    _train(model, ids)
    model.freeze_stack()
    at_freeze = _logits(model, ids)
    base_snapshot = {k: v.clone() for k, v in model.model.state_dict().items()}
    frozen = {name: (layer.frozen_in.clone(), layer.frozen_Bt.clone()) for name, layer in model.layers.items()}

    model.add_stack("code", seed=1)
    _train(model, ids, steps=4)
    # Training happened (the new stack's B left zero), and touched nothing frozen:
    assert all(layer.active.B.abs().sum() > 0 for layer in model.layers.values())
    for name, layer in model.layers.items():
        assert torch.equal(layer.frozen_in, frozen[name][0]) and torch.equal(layer.frozen_Bt, frozen[name][1])
    base_now = model.model.state_dict()
    for key, value in base_snapshot.items():  # the base did not move either
        assert torch.equal(base_now[key], value), key
    with model.isolated("chat"):
        assert torch.equal(_logits(model, ids), at_freeze)
    model.freeze_stack()
    with model.isolated("chat"):
        assert torch.equal(_logits(model, ids), at_freeze)


def test_freeze_and_reload_gives_the_same_model(tmp_path):
    ids = _ids()
    model = _model()
    model.add_stack("math", round=2, seed=3)
    with torch.no_grad():
        model.load_active_state_dict(random_stack_tensors(model, 5))
    tensors = model.freeze_stack()
    assert model.frozen_stacks[-1].domain == "math" and model.frozen_stacks[-1].round == 2
    sha = save_tensors(tmp_path / "math.safetensors", tensors)
    fresh = _model()
    fresh.load_frozen_stack(load_tensors(tmp_path / "math.safetensors", expected_sha256=sha)[0], "math", round=2)
    assert torch.equal(_logits(fresh, ids), _logits(model, ids))
    with pytest.raises(StackFileError, match="lacks"):
        fresh.load_frozen_stack({k: v for k, v in tensors.items() if "q_proj" not in k}, "math")


def test_add_stack_is_a_function_of_the_seed():
    a, b = _model(), _model()
    sa, sb = a.add_stack("chat", seed=4), b.add_stack("chat", seed=4)
    assert all(torch.equal(x.in_proj, y.in_proj) for x, y in zip(sa, sb))
    with pytest.raises(ValueError):
        _model().add_stack("poetry")
    with pytest.raises(ValueError, match="unique"):
        _model(domains=["chat", "chat"])


def test_forward_returns_aux_loss_and_fractions():
    ids = _ids()
    model = _model()
    out = model(ids)
    assert out.aux_loss.item() == 0.0 and out.expert_fractions == []
    model.add_stack("chat")
    model.train()
    out = model(ids, collect_expert_fractions=True)
    assert out.aux_loss.requires_grad and out.aux_loss.item() > 0
    assert len(out.expert_fractions) == len(model.layers) == 14
    assert model.context.aux_losses is None  # nothing left behind on the shared context


# ---------------------------------------------------------------------------------------------- routing


def test_routed_per_sample_equals_each_sample_alone_and_ones_equal_ungated():
    ids = _ids(batch=3)
    model = _model()
    model.load_frozen_stack(random_stack_tensors(model, 0), "chat")
    model.load_frozen_stack(random_stack_tensors(model, 1), "code")
    model.add_stack("math")
    with torch.no_grad():
        model.load_active_state_dict(random_stack_tensors(model, 2))
    weights = torch.tensor([[1.0, 0.0, 0.5], [0.3, 1.0, 0.0], [0.0, 0.2, 0.9]])
    with model.routed(weights):
        batched = _logits(model, ids)
    for i in range(3):
        with model.routed(weights[i : i + 1]):
            assert_fp32_equivalent(batched[i : i + 1], _logits(model, ids[i : i + 1]), TINY_MODEL_DEPTH, f"sample {i}")
    ungated = _logits(model, ids)
    with model.routed(torch.ones(3, 3)):
        assert torch.equal(_logits(model, ids), ungated)


def test_routing_errors_and_restore():
    model = _model()
    with pytest.raises(ValueError, match="unknown domains"):
        with model.isolated("poetry"):
            pass
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        with model.routed(torch.ones(2, 2)):
            pass
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        with model.routed(torch.ones(3)):
            pass
    with pytest.raises(ValueError, match="unknown routing mode"):
        with model.routing("sometimes"):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with model.isolated("code"):
            assert model.context.mode == "isolated"
            raise RuntimeError("boom")
    assert model.context.mode == "ungated" and model.context.active_domains == frozenset()


# ---------------------------------------------------------------------------------------------- injection

_COMMON = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
ARCHITECTURES = {
    "llama": (LlamaConfig(**_COMMON, num_key_value_heads=1), None, 7),
    "mistral": (MistralConfig(**_COMMON, num_key_value_heads=1), None, 7),
    "qwen2": (Qwen2Config(**_COMMON, num_key_value_heads=1), None, 7),
    "gemma": (GemmaConfig(**_COMMON, num_key_value_heads=1, head_dim=8), None, 7),
    "gemma2": (Gemma2Config(**_COMMON, num_key_value_heads=1, head_dim=8), None, 7),
    "phi3": (
        Phi3Config(**_COMMON, num_key_value_heads=2, pad_token_id=0),
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        4,
    ),
    "gpt_neox": (GPTNeoXConfig(**_COMMON), ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"], 4),
    "gpt2": (
        GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64),
        ["c_attn", "c_proj", "c_fc"],
        4,
    ),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_injection_per_architecture(arch):
    hf_config, targets, per_layer = ARCHITECTURES[arch]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(hf_config).eval()
    ids = _ids(vocab=64)
    with torch.no_grad():
        expected = base(ids).logits
    config = StackConfig(**SMALL, **({"target_modules": targets} if targets else {}))
    model = BrainstacksModel(base, config, ["chat"])
    assert len(model.layers) == per_layer * 2
    assert all(isinstance(base.get_submodule(name), StackedLinear) for name in model.layers)
    model.add_stack("chat")
    assert torch.equal(_logits(model, ids), expected)
    with torch.no_grad():
        model.load_active_state_dict(random_stack_tensors(model, 0))
    model.train()
    out = model(ids)
    out.logits.square().mean().backward()
    assert all(stack.B.grad is not None and stack.B.grad.abs().sum() > 0 for stack in model.active_stacks().values())
    assert not torch.allclose(out.logits.detach(), expected)


def test_fused_projection_shapes():
    _, targets, _ = ARCHITECTURES["gpt2"]
    torch.manual_seed(0)
    model = BrainstacksModel(
        AutoModelForCausalLM.from_config(ARCHITECTURES["gpt2"][0]),
        StackConfig(**SMALL, target_modules=targets),
        ["chat"],
    )
    assert model.layer_shapes()["transformer.h.0.attn.c_attn"] == [16, 48]  # Conv1D stores [d_in, d_out]
    assert model.layer_shapes()["transformer.h.0.mlp.c_proj"] == [64, 16]


def test_missing_target_modules_lists_the_linear_names():
    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(ARCHITECTURES["gpt2"][0])
    with pytest.raises(ValueError, match=r"c_attn.*c_fc") as err:
        BrainstacksModel(gpt2, StackConfig(**SMALL), ["chat"])
    assert "q_proj" in str(err.value) and "target_modules" in str(err.value)


# ---------------------------------------------------------------------------------------------- NF4 / dtypes


def _bnb_linear4bit():
    bnb = pytest.importorskip("bitsandbytes")
    return bnb.nn.Linear4bit


def test_nf4_base_is_wrapped_and_trains(tiny_llama_dir):
    linear4bit = _bnb_linear4bit()
    torch.manual_seed(0)  # gate noise
    model = BrainstacksModel(load_base_model(str(tiny_llama_dir), quantization="nf4"), StackConfig(), DOMAINS)
    assert len(model.layers) == 14
    assert all(isinstance(layer.base_layer, linear4bit) for layer in model.layers.values())
    ids = _ids()
    model.add_stack("chat")
    with torch.no_grad():
        before = _lm_loss(model(ids).logits, ids)
    _train(model, ids, steps=10, lr=2e-2)
    with torch.no_grad():
        after = _lm_loss(model(ids).logits, ids)
    assert after < before - 0.1


def _delta_logits(model: BrainstacksModel, ids: torch.Tensor) -> torch.Tensor:
    with model.base_only():
        base = _logits(model, ids)
    return _logits(model, ids) - base


@pytest.mark.parametrize("trained_on, loaded_on", [("nf4", None), (None, "nf4")])
def test_stack_transfers_between_nf4_and_fp32(tiny_llama_dir, tmp_path, trained_on, loaded_on):
    _bnb_linear4bit()
    # Dense gating (top_k = experts): with top-1 routing a token near the decision boundary may
    # pick the other expert under the other base, a real but discontinuous effect that would
    # make this comparison depend on the seed.
    config = StackConfig(experts=2, rank=4, top_k=2)
    torch.manual_seed(0)  # gate noise while training
    ids = _ids()
    source = BrainstacksModel(load_base_model(str(tiny_llama_dir), quantization=trained_on), config, ["chat"])
    source.add_stack("chat")
    _train(source, ids, steps=10, lr=2e-2)
    sha = save_tensors(tmp_path / "chat.safetensors", source.freeze_stack())
    target = BrainstacksModel(load_base_model(str(tiny_llama_dir), quantization=loaded_on), config, ["chat"])
    target.load_frozen_stack(load_tensors(tmp_path / "chat.safetensors", expected_sha256=sha)[0], "chat")

    with source.base_only(), target.base_only():
        assert not torch.equal(_logits(source, ids), _logits(target, ids))  # the bases really differ
    src_delta, dst_delta = _delta_logits(source, ids), _delta_logits(target, ids)
    assert src_delta.norm() > 0.1
    assert torch.linalg.norm(src_delta - dst_delta) / torch.linalg.norm(src_delta) < 0.15  # ~0.045 measured
    assert F.cosine_similarity(src_delta.flatten(), dst_delta.flatten(), dim=0) > 0.98


def test_bfloat16_base_loads_and_runs(tiny_llama_dir):
    model = BrainstacksModel(load_base_model(str(tiny_llama_dir), dtype="bfloat16"), StackConfig(**SMALL), DOMAINS)
    assert next(model.model.parameters()).dtype == torch.bfloat16
    ids = _ids()
    model.add_stack("chat")
    with torch.no_grad():
        model.load_active_state_dict(random_stack_tensors(model, 0))
    model.train()
    out = model(ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
    _lm_loss(out.logits, ids).backward()
    stack = next(iter(model.active_stacks().values()))
    assert stack.B.dtype == torch.float32 and stack.B.grad.abs().sum() > 0
    model.eval()
    assert not torch.equal(_delta_logits(model, ids), torch.zeros_like(out.logits))


def test_nf4_input_gradient_survives_an_eval_forward(tiny_nf4_dir):
    """A no-grad eval forward (a validation pass) must not switch NF4 layers to a kernel without backward.

    64-wide layers: on AVX512-BF16 CPUs that repacking would otherwise succeed and silently
    drop the gradient (narrower layers crash instead, which ``tiny_llama_dir`` tests cover).
    """
    _bnb_linear4bit()
    model = BrainstacksModel(load_base_model(str(tiny_nf4_dir), quantization="nf4"), StackConfig(), DOMAINS)
    ids = _ids()

    def input_grad() -> torch.Tensor:
        embeds = model.model.get_input_embeddings()(ids).detach().requires_grad_()
        model.model(inputs_embeds=embeds).logits.square().sum().backward()
        return embeds.grad

    before = input_grad()
    with torch.no_grad():
        model.eval()(ids)
    after = input_grad()
    assert before.abs().sum() > 0
    torch.testing.assert_close(after, before, rtol=0, atol=0)
