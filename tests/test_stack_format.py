"""The stack format declaration (``layers/stack_format.py``): rows, shapes, names, the active-key test."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from brainstacks_pl import BrainstacksModel, MoELoRA, StackConfig
from brainstacks_pl.errors import StackFileError
from brainstacks_pl.layers.stack_format import TENSOR_NAMES, StackLayout, check_shapes, file_shapes, is_active_key


@pytest.mark.parametrize("experts,rank", [(1, 1), (3, 4), (8, 16)])
def test_layout_rows_partition_in_proj(experts, rank):
    layout = StackLayout(d_in=7, d_out=5, experts=experts, rank=rank)
    rows = [range(layout.in_rows)[part] for part in (layout.a, layout.router, layout.noise)]
    # in order, no gap, no overlap
    assert [i for part in rows for i in part] == list(range(layout.shapes["in_proj"][0]))
    assert [len(part) for part in rows] == layout.row_split == [experts * rank, experts, experts]
    assert layout.frozen_rows == layout.noise.start  # a frozen stack keeps A | W_r
    assert layout.shapes == {"in_proj": (experts * rank + 2 * experts, 7), "B": (5, experts * rank)}
    assert tuple(layout.shapes) == TENSOR_NAMES


def test_moe_lora_parameters_are_the_declared_tensors():
    config = StackConfig(experts=3, rank=4, top_k=2)
    stack = MoELoRA(7, 5, config)
    assert {name: tuple(t.shape) for name, t in stack.stack_tensors().items()} == StackLayout.of(7, 5, config).shapes
    assert {name for name, _ in stack.named_parameters()} == set(TENSOR_NAMES)


def test_check_shapes_names_the_bad_tensor():
    shapes = file_shapes({"layers.0.q_proj": (8, 6)}, experts=2, rank=3)
    good = {key: torch.zeros(shape) for key, shape in shapes.items()}
    check_shapes(good, shapes, "s.safetensors")
    bad_shape = r"s\.safetensors: tensor 'layers\.0\.q_proj\.B' has shape \(6, 5\), this model needs \(6, 6\)"
    with pytest.raises(StackFileError, match=bad_shape):
        check_shapes({**good, "layers.0.q_proj.B": torch.zeros(6, 5)}, shapes, "s.safetensors")
    with pytest.raises(StackFileError, match=r"lacks 1 tensors .*'layers\.0\.q_proj\.in_proj'"):
        check_shapes({"layers.0.q_proj.B": good["layers.0.q_proj.B"]}, shapes, "s.safetensors")


def test_active_keys_are_exactly_the_active_stack_parameters():
    stacks = BrainstacksModel(make_tiny_llama(), StackConfig(experts=2, rank=2, top_k=1), ["chat"])
    stacks.add_stack("chat")
    keys = [f"stacks.{key}" for key in stacks.state_dict()]  # as a LightningModule holding it names them
    trainable = {f"stacks.{name}" for name, p in stacks.named_parameters() if p.requires_grad}
    assert {key for key in keys if is_active_key(key)} == trainable and trainable
    assert not is_active_key("stacks.model.layers.0.self_attn.q_proj.active_domain.B")
    assert not is_active_key("stacks.model.layers.0.self_attn.q_proj.base_layer.weight")
