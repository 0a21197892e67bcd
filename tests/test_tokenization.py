"""The byte tokenizer, and the one pad-id rule every batching path follows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama

from brainstacks_pl.config import StackConfig
from brainstacks_pl.data import CurriculumDataModule, DomainConfig
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.routing.features import compute_features
from brainstacks_pl.tokenization import byte_tokenizer, pad_token_id

PACKAGE = Path(__file__).resolve().parents[1] / "brainstacks_pl"


def tokenizer_without(*tokens: str):
    tok = byte_tokenizer()
    for token in tokens:
        setattr(tok, token, None)
    return tok


@pytest.mark.parametrize(
    ("missing", "expected"),
    [((), "pad"), (("pad_token",), "eos"), (("pad_token", "eos_token"), 0)],
)
def test_pad_id_is_pad_else_eos_else_0_for_data_and_routing(missing, expected):
    tok = tokenizer_without(*missing)
    want = {"pad": tok.pad_token_id, "eos": tok.eos_token_id}.get(expected, expected)
    assert isinstance(want, int) and pad_token_id(tok) == want
    data = CurriculumDataModule([DomainConfig("chat", "demo:chat", max_examples=4)])
    data.set_tokenizer(tok)
    assert data.pad_id == want  # was a ValueError without pad and eos
    # Router features pad a batch with it: a short prompt's features do not depend on its batch
    # (right padding), and a tokenizer without pad or eos no longer fails (torch.full(None)).
    stacks = BrainstacksModel(make_tiny_llama(), StackConfig(rank=4), ["chat"]).eval()
    short, long = compute_features(stacks, tok, ["hi", "a much longer prompt than the other"], seq_len=256)
    [alone] = compute_features(stacks, tok, ["hi"], seq_len=256)
    torch.testing.assert_close(short, alone)
    assert long.shape[0] > short.shape[0]


def test_no_module_but_tokenization_derives_a_pad_id():
    """One rule: reading ``.pad_token_id`` is left to ``tokenization.pad_token_id`` (``demo_base``
    writes it into the demo model's config, which is not padding)."""
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Attribute) and n.attr == "pad_token_id" for n in ast.walk(tree)):
            readers.add(path.relative_to(PACKAGE).as_posix())
    assert readers == {"tokenization.py", "demo_base.py"}, readers
