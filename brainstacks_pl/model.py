"""BrainstacksModel: a frozen Hugging Face causal LM with StackedLinear injected.

It owns the one ``StackContext`` its layers share, so routing is set through its context
managers (``ungated()``, ``isolated(domains)``, ``routed(weights)``, ``base_only()``) and the
load-balance losses come back as a return value of ``forward``, never as hidden state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from brainstacks_pl.assets import resolve_model_name
from brainstacks_pl.config import StackConfig
from brainstacks_pl.layers.context import RoutingMode, StackContext
from brainstacks_pl.layers.dtensor import assign_, full_tensor
from brainstacks_pl.layers.moe_lora import MoELoRA
from brainstacks_pl.layers.stack_format import check_shapes, file_key, file_shapes, layer_tensors
from brainstacks_pl.layers.stacked_linear import StackedLinear
from brainstacks_pl.losses import causal_lm_loss

__all__ = ["BrainstacksModel", "StackForward", "inject_stacks", "load_base_model", "FrozenStackInfo"]


class StackForward(NamedTuple):
    logits: Tensor
    """[B, L, vocab]"""
    aux_loss: Tensor
    """Sum over layers of the active stack's load-balance losses (0 without an active stack)."""
    expert_fractions: list[Tensor]
    """Per layer, the active stack's [E] expert utilisation (empty unless requested)."""
    loss: Tensor | None = None
    """Mean next-token loss on ``labels`` (``-100`` ignored, shifted inside) when they are given.
    The training objective is ``loss + stack_config.aux_coeff * aux_loss``."""


@dataclass
class FrozenStackInfo:
    domain: str
    round: int


def load_base_model(
    name_or_path: str,
    quantization: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load a causal LM from the hub or a local ``save_pretrained`` directory.

    ``quantization="nf4"`` loads the linear weights as bitsandbytes NF4 ``Linear4bit`` (QLoRA
    style: double quantisation, compute and storage dtype = ``dtype``), which works on CUDA
    and on the CPU with bitsandbytes >= 0.45.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from brainstacks_pl.fingerprint import check_base_exists

    check_base_exists(name_or_path)
    torch_dtype = getattr(torch, dtype)
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_quant_storage=torch_dtype,
        )
        if not torch.cuda.is_available():
            kwargs["device_map"] = {"": "cpu"}
    elif quantization is not None:
        raise ValueError(f"quantization must be None or 'nf4', got {quantization!r}")
    model = AutoModelForCausalLM.from_pretrained(resolve_model_name(name_or_path), **kwargs)
    return model.eval()


def inject_stacks(model: nn.Module, config: StackConfig, context: StackContext) -> dict[str, StackedLinear]:
    """Replace every module whose last name component is in ``config.target_modules``."""
    targets = set(config.target_modules)
    matches = [(name, module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in targets]
    if not matches:
        linear_names = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
            }
        )
        raise ValueError(
            f"none of target_modules {sorted(targets)} exist in {type(model).__name__}; "
            f"its linear modules are named: {linear_names}. Set StackConfig.target_modules accordingly."
        )
    _keep_nf4_differentiable(model)
    layers = {}
    for name, module in matches:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = StackedLinear(module, config, context, name=name)
        layer.train(module.training)  # keep the wrapped module's mode (an eval model stays in eval)
        setattr(parent, child_name, layer)
        layers[name] = layer
    return layers


def _keep_nf4_differentiable(model: nn.Module) -> None:
    """Keep bitsandbytes' NF4 layers on their autograd path on AVX512-BF16 CPUs.

    On such CPUs ``Linear4bit`` repacks its weight for a faster inference kernel at the first
    eval forward without grad (a validation pass), *permanently*, and that kernel has no
    backward: every later training step silently loses the gradient through the base
    (the path to earlier layers' stacks), and layers narrower than 64 inputs crash. Stacks
    train through the base, so the repacking is switched off (bitsandbytes reads this flag).
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


class BrainstacksModel(nn.Module):
    """A frozen base LM plus MoE-LoRA stacks on its target projections."""

    def __init__(self, model: nn.Module, stack_config: StackConfig, domains: list[str], base_model_id: str = ""):
        super().__init__()
        if len(set(domains)) != len(domains):
            raise ValueError(f"domain names must be unique, got {domains}")
        self.model = model
        self.stack_config = stack_config
        self.base_model_id = base_model_id
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.context = StackContext(domains=list(domains))
        self.layers = inject_stacks(self.model, stack_config, self.context)
        self.frozen_stacks: list[FrozenStackInfo] = []
        self.active_info: FrozenStackInfo | None = None

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, stack_config: StackConfig, domains: list[str], **load_kwargs
    ) -> BrainstacksModel:
        return cls(load_base_model(name_or_path, **load_kwargs), stack_config, domains, base_model_id=name_or_path)

    @property
    def domains(self) -> list[str]:
        return self.context.domains

    # ------------------------------------------------------------------ stacks
    def add_stack(self, domain: str, round: int = 0, seed: int = 0) -> list[MoELoRA]:
        """Add a new active stack to every layer; initialisation is a function of ``seed`` only."""
        self.context.domain_index(domain)  # raises for an unknown domain
        generator = torch.Generator().manual_seed(seed)
        stacks = [layer.add_active(domain, generator) for layer in self.layers.values()]
        self.active_info = FrozenStackInfo(domain, round)
        return stacks

    def freeze_stack(self) -> dict[str, Tensor]:
        """Freeze the active stack in every layer; return its tensors keyed ``<layer>.in_proj|B``."""
        if self.active_info is None:
            raise RuntimeError("there is no active stack to freeze")
        tensors = {}
        for name, layer in self.layers.items():
            for key, value in layer.freeze_active().items():
                tensors[file_key(name, key)] = value
        self.frozen_stacks.append(self.active_info)
        self.active_info = None
        return tensors

    def load_frozen_stack(
        self, tensors: dict[str, Tensor], domain: str, round: int = 0, where: str = "stack tensors"
    ) -> None:
        """Append a frozen stack from file tensors, checked once (names, shapes) before any layer changes.

        ``where`` names the source in the ``StackFileError`` (the file, when loading one).
        """
        check_shapes(tensors, self.stack_shapes(), where)
        self._push_frozen_stack(tensors, domain, round)

    def set_frozen_stacks(self, stacks: list[tuple[dict[str, Tensor], str, int]]) -> None:
        """Replace all frozen stacks by ``[(tensors, domain, round), ...]`` (cleared, then appended).

        Routed inference keeps only the selected domains' stacks in the layers' buffers, so
        device memory follows the request, not the number of stack files on disk. The tensors
        were checked when their file was read (``load_tensors`` with ``stack_shapes()``), so a
        request swaps them in without checking them again.
        """
        for layer in self.layers.values():
            layer.clear_frozen()
        self.frozen_stacks = []
        for tensors, domain, round in stacks:
            self._push_frozen_stack(tensors, domain, round)

    def _push_frozen_stack(self, tensors: dict[str, Tensor], domain: str, round: int) -> None:
        for name, layer in self.layers.items():
            layer.push_frozen(layer_tensors(tensors, name), domain)
        self.frozen_stacks.append(FrozenStackInfo(domain, round))

    def active_stacks(self) -> dict[str, MoELoRA]:
        return {name: layer.active for name, layer in self.layers.items() if layer.active is not None}

    def active_state_dict(self) -> dict[str, Tensor]:
        """The trainable tensors of the active stack, keyed ``<layer>.in_proj|B`` (fp32, detached)."""
        return {
            file_key(name, key): full_tensor(value.detach()).clone()
            for name, stack in self.active_stacks().items()
            for key, value in stack.stack_tensors().items()
        }

    @torch.no_grad()
    def load_active_state_dict(self, tensors: dict[str, Tensor]) -> None:
        for name, stack in self.active_stacks().items():
            for key, value in stack.stack_tensors().items():
                assign_(value, tensors[file_key(name, key)])

    def layer_shapes(self) -> dict[str, list[int]]:
        return {name: [layer.d_in, layer.d_out] for name, layer in self.layers.items()}

    def stack_shapes(self) -> dict[str, tuple[int, int]]:
        """Shape of every tensor of this model's stack files (``layers/stack_format.py``)."""
        return file_shapes(self.layer_shapes(), self.stack_config.experts, self.stack_config.rank)

    # ------------------------------------------------------------------ null space
    def set_null_space(self, bases: dict[str, Tensor], mode: str) -> None:
        """Give each layer its basis V and the projection mode (``weight``, ``delta`` or ``off``)."""
        if mode not in ("weight", "delta", "off"):
            raise ValueError(f"null-space mode must be 'weight', 'delta' or 'off', got {mode!r}")
        for name, layer in self.layers.items():
            layer.set_null_basis(bases.get(name))
            layer.null_space_mode = mode

    # ------------------------------------------------------------------ routing
    @contextlib.contextmanager
    def routing(
        self, mode: RoutingMode, domains: frozenset[str] | set[str] | list[str] = (), weights: Tensor | None = None
    ) -> Iterator[None]:
        """Scope a routing mode; the previous one is restored on exit (also on error)."""
        if mode not in ("ungated", "isolated", "routed", "base"):
            raise ValueError(f"unknown routing mode {mode!r}")
        unknown = set(domains) - set(self.domains)
        if unknown:
            raise ValueError(f"unknown domains {sorted(unknown)}; this model has {self.domains}")
        if mode == "routed" and (weights is None or weights.dim() != 2 or weights.shape[1] != len(self.domains)):
            raise ValueError(
                f"routed mode needs weights of shape [batch, {len(self.domains)}], "
                f"got {None if weights is None else tuple(weights.shape)}"
            )
        ctx = self.context
        saved = (ctx.mode, ctx.active_domains, ctx.weights)
        ctx.mode, ctx.active_domains, ctx.weights = mode, frozenset(domains), weights
        try:
            yield
        finally:
            ctx.mode, ctx.active_domains, ctx.weights = saved

    def ungated(self):
        return self.routing("ungated")

    def isolated(self, domains):
        return self.routing("isolated", domains=[domains] if isinstance(domains, str) else domains)

    def routed(self, weights: Tensor):
        return self.routing("routed", weights=weights)

    def base_only(self):
        return self.routing("base")

    @contextlib.contextmanager
    def active_off(self) -> Iterator[None]:
        """Scope with the active stack switched off (routing unchanged): the DPO/GRPO reference
        policy is this same model without its trainable stack, so no second copy is held."""
        saved = self.context.active_enabled
        self.context.active_enabled = False
        try:
            yield
        finally:
            self.context.active_enabled = saved

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        collect_expert_fractions: bool = False,
        labels: Tensor | None = None,
        **kwargs,
    ) -> StackForward:
        ctx = self.context
        ctx.aux_losses = []
        ctx.expert_fractions = [] if collect_expert_fractions else None
        try:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
            aux = torch.stack(ctx.aux_losses).sum() if ctx.aux_losses else logits.new_zeros(())
            fractions = ctx.expert_fractions or []
        finally:
            ctx.aux_losses, ctx.expert_fractions = None, None
        return StackForward(logits, aux, fractions, None if labels is None else causal_lm_loss(logits, labels))
