"""Procedural task families from ``reasoning-gym``: items to train on, and their own judge.

A source ``reasoning_gym:<family>`` (a domain's ``path``, a GRPO prompt source, an evaluation
task's ``path``) generates ``size`` items of that family with ``seed`` and the generator's own
settings (``generator``: the keyword arguments of ``reasoning_gym.create_dataset``). Each item
is ``{"question", "answer", "metadata"}``; for SFT it becomes the example
``prompt=question, response=answer``.

Every judgement is the family's own ``score_answer(answer, entry)`` applied to the answer
``answers.final_answer`` extracts from a completion (``answers.py``: the same rule for GRPO
rewards and evaluation). An item counts as solved when its score is 1.0 (``SOLVED``):
reasoning-gym gives partial credit to some wrong answers (0.01 for any non-empty answer in
several families), and accuracy counts exact solutions only.

Items of one family drawn with different seeds can repeat (a family of two one-digit sums has
~200 distinct questions), so training, validation and evaluation items are kept apart by
question text, not by seed: ``questions`` gives what a run trained on, and evaluation drops
those (``evaluation/tasks.py``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Mapping, Sequence
from typing import Any

from brainstacks_pl.answers import final_answer
from brainstacks_pl.errors import UserError

__all__ = [
    "PREFIX",
    "SOLVED",
    "family_of",
    "generate_items",
    "is_procedural",
    "questions",
    "trained_questions",
    "reasoning_gym_reward",
    "score_completion",
]

PREFIX = "reasoning_gym:"
SOLVED = 1.0
"""The ``score_answer`` value that counts as a correct answer."""
INSTALL = 'pip install -e ".[real]"'


def is_procedural(path: str) -> bool:
    """``path`` names a reasoning-gym family (``reasoning_gym:<family>``)."""
    return isinstance(path, str) and path.startswith(PREFIX)


def family_of(path: str) -> str:
    """The family name of a ``reasoning_gym:<family>`` source."""
    family = path[len(PREFIX) :].strip()
    if not family:
        raise UserError(f"{path!r}: name a reasoning-gym family after '{PREFIX}', e.g. {PREFIX}chain_sum")
    return family


def _reasoning_gym():
    if importlib.util.find_spec("reasoning_gym") is None:
        raise UserError(f"reasoning-gym task families need the 'reasoning-gym' package: {INSTALL}")
    import reasoning_gym

    return reasoning_gym


def _freeze(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True)


@functools.lru_cache(maxsize=64)
def _dataset(family: str, size: int, seed: int, config_json: str):
    gym = _reasoning_gym()
    config = json.loads(config_json)
    try:
        return gym.create_dataset(family, size=size, seed=seed, **config)
    except (ValueError, TypeError, AssertionError) as err:
        from reasoning_gym.factory import DATASETS

        if family not in DATASETS:
            raise UserError(
                f"{PREFIX}{family}: no such reasoning-gym family (there are {len(DATASETS)}, e.g. "
                f"{', '.join(sorted(DATASETS)[:6])})"
            ) from None
        raise UserError(f"{PREFIX}{family}: invalid generator settings {config}: {err}") from None


def generate_items(family: str, size: int, seed: int, config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """``size`` items of ``family``, deterministic in ``(seed, config)``; JSON-safe (tuples as lists)."""
    if size < 1:
        raise UserError(f"{PREFIX}{family}: size must be >= 1, got {size}")
    dataset = _dataset(family, int(size), int(seed), _freeze(config or {}))
    return [json.loads(json.dumps(entry, default=list)) for entry in dataset]


def questions(family: str, size: int, seed: int, config: Mapping[str, Any] | None = None) -> set[str]:
    """The questions of those items (what evaluation must not ask again)."""
    return {entry["question"].strip() for entry in generate_items(family, size, seed, config)}


def score_completion(completion: str, entry: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> float:
    """The family's ``score_answer`` on the completion's ``final_answer`` (0.0 with none)."""
    family = entry["metadata"]["source_dataset"]
    answer = final_answer(str(completion))
    if answer is None:
        return 0.0
    scorer = _dataset(family, 1, 0, _freeze(config or {})).score_answer
    return float(scorer(answer, dict(entry)))


def reasoning_gym_reward(
    prompts: Sequence[str], completions: Sequence[str], entry: Sequence[str | Mapping[str, Any]], **_: Any
) -> list[float]:
    """GRPO reward: 1.0 for a completion its family's ``score_answer`` judges solved, else 0.0.

    ``entry`` is the prompt row's item (a ``reasoning_gym:`` prompt source writes it as JSON),
    so the reward judges exactly as ``brainstacks evaluate`` does.
    """
    items = [json.loads(e) if isinstance(e, str) else e for e in entry]
    return [float(score_completion(c, item) >= SOLVED) for c, item in zip(completions, items)]


def trained_questions(settings: Mapping[str, Any]) -> set[str]:
    """Every question of the ``reasoning_gym:`` sources a run's phases trained on.

    ``settings`` is ``manifest.extra["settings"]`` (per phase, the resolved options as dotted
    keys): a curriculum's ``domains`` list and a prompt data module's ``path``/``size``/``seed``/
    ``generator`` are both found, so evaluation never scores an item the run has seen.
    """
    found: set[str] = set()
    for phase in settings.values():
        if not isinstance(phase, Mapping):
            continue
        for key, value in phase.items():
            if key.endswith(".domains") and isinstance(value, list):
                for domain in value:
                    if isinstance(domain, Mapping) and is_procedural(domain.get("path", "")):
                        found |= _source_questions(domain)
            elif key.endswith(".path") and is_procedural(value):
                prefix = key[: -len("path")]
                found |= _source_questions({k[len(prefix) :]: v for k, v in phase.items() if k.startswith(prefix)})
    return found


def _source_questions(source: Mapping[str, Any]) -> set[str]:
    return questions(
        family_of(source["path"]),
        int(source.get("size", 1000)),
        int(source.get("seed", 0)),
        source.get("generator") or {},
    )
