"""Shared tiny fixtures: a byte tokenizer and a 2-layer Llama-style model built from a config."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from brainstacks_pl.tokenization import byte_tokenizer


def tiny_llama_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=260,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def make_tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


def random_stack_tensors(model, seed: int, b_scale: float = 0.2) -> dict[str, torch.Tensor]:
    """Trained-looking stack tensors for every layer of a ``BrainstacksModel``, shaped as its stack
    files (``model.stack_shapes()``): ``in_proj`` at the scale of its initialisation, ``B`` random
    with standard deviation ``b_scale`` (a trained stack's B is no longer zero)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(shape, generator=gen) * (b_scale if key.endswith(".B") else shape[1] ** -0.5)
        for key, shape in model.stack_shapes().items()
    }


NF4_WIDTHS = dict(hidden_size=64, intermediate_size=128)
"""A tiny model NF4 can quantise on every CPU: input widths are whole blocks of 64 (see model._check_nf4_blocks)."""


def save_tiny_model(path, **overrides):
    """Write the tiny model and the byte tokenizer with ``save_pretrained``: an offline hub directory."""
    make_tiny_llama(**overrides).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


TEST_THREADS = int(os.environ.get("BRAINSTACKS_TEST_THREADS", "1"))
"""Torch threads in the test process (1 by default; the suite must also pass with 2)."""


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny tensors run fastest on one thread; two OpenMP pools on 2 cores thrash each other.

    Session-scoped so that module- and session-scoped fixtures (tiny training runs) get it too.
    ``BRAINSTACKS_TEST_THREADS=2`` runs the suite with two threads (other summation orders).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def tiny_llama_dir(tmp_path):
    """A tiny model + tokenizer written with ``save_pretrained``: the hub-loading path, offline."""
    return save_tiny_model(tmp_path / "tiny-llama")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """``tiny_llama_dir`` shared by a module's tests (runs read the model directory, never write it)."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def tiny_nf4_dir(tmp_path):
    """Like ``tiny_llama_dir``, with input widths NF4 can quantise on every CPU."""
    return save_tiny_model(tmp_path / "tiny-nf4", **NF4_WIDTHS)
