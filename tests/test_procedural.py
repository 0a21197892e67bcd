"""A reasoning-gym family as SFT data, GRPO prompts + reward, and an evaluation task, judged by
its own ``score_answer`` with one answer rule (brainstacks_pl/data/procedural.py)."""

from __future__ import annotations

import json

import pytest

from brainstacks_pl.data import CurriculumDataModule, DomainConfig
from brainstacks_pl.data.procedural import generate_items, reasoning_gym_reward, score_completion, trained_questions
from brainstacks_pl.data.rl_prompts import PromptDataModule
from brainstacks_pl.data.sources import load_examples
from brainstacks_pl.errors import UserError
from brainstacks_pl.evaluation.run_eval import is_solved
from brainstacks_pl.evaluation.tasks import TaskSpec
from brainstacks_pl.evaluation.tasks import load_examples as load_task_examples

SUMS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def _domain(size: int = 30, seed: int = 5) -> DomainConfig:
    return DomainConfig("arith", "reasoning_gym:chain_sum", size=size, seed=seed, generator=SUMS)


def test_a_family_is_a_deterministic_domain_of_question_answer_examples():
    examples, counts = load_examples(_domain())
    again, _ = load_examples(_domain())
    assert counts == {"loaded": 30, "dropped_invalid": 0} and examples == again
    items = generate_items("chain_sum", 30, 5, SUMS)
    assert [(e.prompt, e.response) for e in examples] == [(i["question"], i["answer"]) for i in items]
    other, _ = load_examples(_domain(seed=6))
    assert [e.prompt for e in other] != [e.prompt for e in examples]


def test_sft_rows_learn_only_the_answer(tokenizer):
    data = CurriculumDataModule([_domain()], max_seq_len=128, batch_size=2, pack=False)
    data.set_tokenizer(tokenizer)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    learned = tokenizer.decode([t for t, lab in zip(ids.tolist(), labels.tolist()) if lab != -100])
    example = data.examples("arith")[0]
    assert learned.startswith(example.response) and example.prompt not in learned


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"path": "reasoning_gym:no_such_family"}, "no such reasoning-gym family"),
        ({"generator": {"min_terms": 5, "max_terms": 2}}, "invalid generator settings"),
        ({"path": "reasoning_gym:"}, "name a reasoning-gym family"),
    ],
)
def test_bad_sources_are_one_line_errors_naming_the_family(bad, message):
    fields = {"name": "x", "path": "reasoning_gym:chain_sum", "size": 4, "generator": SUMS, **bad}
    with pytest.raises(UserError, match=message):
        load_examples(DomainConfig(**fields))


def test_grpo_prompts_carry_the_item_and_the_reward_is_the_family_scorer(tokenizer):
    data = PromptDataModule("reasoning_gym:chain_sum", size=12, seed=5, generator=SUMS, val_fraction=0.25)
    data.set_tokenizer(tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    entries, answers = batch["columns"]["entry"], batch["columns"]["answer"]
    right = [f"The answer is {a}." for a in answers]
    wrong = [f"<answer>{int(a) + 1}</answer>" for a in answers]
    prompts = batch["prompts"]
    assert reasoning_gym_reward(prompts, right, entry=entries) == [1.0] * len(prompts)
    assert reasoning_gym_reward(prompts, wrong, entry=entries) == [0.0] * len(prompts)
    assert reasoning_gym_reward(prompts, [""] * len(prompts), entry=entries) == [0.0] * len(prompts)


def test_evaluation_drops_every_question_the_run_trained_on_and_judges_like_the_reward():
    settings = {"sft": {"data.init_args.domains": [vars(_domain(size=40))]}}
    seen = trained_questions(settings)
    assert seen == {i["question"].strip() for i in generate_items("chain_sum", 40, 5, SUMS)}
    task = TaskSpec(
        name="arith", domain="arith", type="generation", path="reasoning_gym:chain_sum", size=60, seed=5, generator=SUMS
    )
    assert task.extract == "final"
    data = load_task_examples(task, exclude=seen)
    assert data.excluded >= 40  # the same seed: its first 40 items are the trained ones
    assert all(ex.prompt.strip() not in seen for ex in data.examples)
    example = data.examples[0]
    for completion in (f"#### {example.answer}", "I do not know", f"<answer>{example.answer}</answer>"):
        judged = is_solved(completion, None, example, task)
        reward = reasoning_gym_reward([example.prompt], [completion], entry=[json.dumps(example.entry)])
        assert reward == [float(judged)] and judged == (score_completion(completion, example.entry) >= 1.0)
