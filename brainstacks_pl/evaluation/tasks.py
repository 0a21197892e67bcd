"""Evaluation tasks from YAML: multiple choice or generation, over local json/jsonl or hub data.

One task per YAML file::

    name: math_mc                 # unique; names the results and the TensorBoard tags
    domain: math                  # the domain the task measures (shown beside the scores)
    type: mc                      # mc: rank choices by mean per-token log-prob; generation: greedy + extract
    path: math_mc.jsonl           # json/jsonl file (relative to the YAML) or a hub dataset name
    split: test                   # hub split (local files: ignored)
    subset: null                  # hub configuration, e.g. "main" for gsm8k
    columns: {prompt: question}   # logical field -> dataset column (prompt, choices, answer)
    few_shot: 0                   # k solved examples (the first k rows, then not scored) before each prompt
    extract: hash                 # generation: hash | last_number | letter | exact
    max_new_tokens: 64            # generation: tokens to generate at most
    stop: ["### Prompt"]          # generation: cut the answer at the first of these strings
    limit: null                   # score only the first N examples

A ``reasoning_gym:<family>`` path generates ``size`` items with ``seed`` and the family's
``generator`` settings (``data/procedural.py``); each is judged by the family's own
``score_answer`` on the ``final`` answer (``answers.py``), whatever ``extract`` says, and an
item whose question the run trained on is dropped (``evaluate`` passes those questions as
``exclude``; ``results.json`` counts them)::

    name: arith_eval
    domain: arith
    type: generation
    path: "reasoning_gym:chain_sum"
    size: 100
    seed: 1001
    generator: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 2}

Multiple-choice ``answer`` is the index of the right choice, its letter ("B") or its text.
Generation ``answer`` is the gold text the extracted answer is compared with (numbers
numerically). Every prompt is wrapped in the run's SFT prompt template, as in training.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml

from brainstacks_pl.answers import EXTRACTORS
from brainstacks_pl.data.procedural import family_of, generate_items, is_procedural
from brainstacks_pl.prompts import DEFAULT_PROMPT_TEMPLATE, format_prompt

__all__ = [
    "TaskSpec",
    "TaskExample",
    "TaskData",
    "DEMO_TASKS_DIR",
    "load_task",
    "resolve_tasks",
    "load_examples",
    "build_context",
]

DEMO_TASKS_DIR = Path(__file__).parent / "demo_tasks"
_LOCAL_SUFFIXES = (".json", ".jsonl")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class TaskSpec:
    """One evaluation task (see the module docstring for the YAML fields)."""

    name: str
    domain: str
    type: Literal["mc", "generation"]
    path: str
    split: str = "test"
    subset: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    few_shot: int = 0
    extract: str = "hash"
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=lambda: ["### Prompt", "\n\n"])
    limit: int | None = None
    size: int = 100
    """``reasoning_gym:`` paths: items to generate."""
    seed: int = 0
    """``reasoning_gym:`` paths: the generator's seed."""
    generator: dict[str, Any] = field(default_factory=dict)
    """``reasoning_gym:`` paths: the family's settings."""
    source: str | None = None
    """The YAML file the task came from (relative ``path`` resolves against its folder)."""

    def __post_init__(self) -> None:
        where = f"task {self.name!r}" + (f" ({self.source})" if self.source else "")
        if not self.name:
            raise ValueError(f"{where}: name must be a non-empty string")
        if self.type not in ("mc", "generation"):
            raise ValueError(f"{where}: type must be 'mc' or 'generation', got {self.type!r}")
        if is_procedural(self.path):
            if self.type != "generation":
                raise ValueError(f"{where}: a reasoning_gym: task is a generation task (type: generation)")
            self.extract = "final"  # what the family's score_answer judges (answers.py)
        if self.type == "generation" and self.extract not in EXTRACTORS:
            raise ValueError(f"{where}: extract must be one of {sorted(EXTRACTORS)}, got {self.extract!r}")
        if self.few_shot < 0 or (self.limit is not None and self.limit < 1) or self.max_new_tokens < 1:
            raise ValueError(f"{where}: need few_shot >= 0, limit >= 1 (or null) and max_new_tokens >= 1")
        unknown = set(self.columns) - {"prompt", "choices", "answer"}
        if unknown:
            raise ValueError(f"{where}: unknown logical columns {sorted(unknown)}; use prompt, choices, answer")

    def column(self, key: str) -> str:
        return self.columns.get(key, key)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


@dataclass
class TaskExample:
    prompt: str
    answer: Any
    """mc: index of the right choice; generation: the gold answer text."""
    choices: list[str] | None = None
    entry: dict[str, Any] | None = None
    """A reasoning-gym item: judged by its family's ``score_answer`` (``data/procedural.py``)."""


class TaskData(NamedTuple):
    shots: list[TaskExample]
    examples: list[TaskExample]
    """The scored examples (after ``few_shot``, ``exclude`` and ``limit``)."""
    excluded: int
    """Examples dropped because their prompt is in ``exclude`` (what the run trained on)."""


def load_task(path: str | Path) -> TaskSpec:
    """Read one task YAML."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a task YAML is a mapping with name, domain, type, path")
    missing = {"name", "type", "path"} - set(data)
    if missing:
        raise ValueError(f"{path}: missing fields {sorted(missing)}")
    data.setdefault("domain", data["name"])
    known = set(TaskSpec.__dataclass_fields__) - {"source"}
    extra = set(data) - known
    if extra:
        raise ValueError(f"{path}: unknown fields {sorted(extra)}; known: {sorted(known)}")
    return TaskSpec(**data, source=str(path))


def resolve_tasks(spec: str | list[str]) -> list[TaskSpec]:
    """Tasks from a comma list of: ``demo`` (every bundled task), a bundled task name, a YAML
    file, or a folder of YAML files."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no tasks given: use --tasks demo, a task name, a YAML file or a folder")
    tasks: list[TaskSpec] = []
    for item in items:
        path = Path(item)
        if item == "demo":
            tasks += [load_task(p) for p in sorted(DEMO_TASKS_DIR.glob("*.yaml"))]
        elif path.is_dir():
            tasks += [load_task(p) for p in sorted(path.glob("*.yaml"))]
        elif path.is_file():
            tasks.append(load_task(path))
        elif (DEMO_TASKS_DIR / f"{item}.yaml").is_file():
            tasks.append(load_task(DEMO_TASKS_DIR / f"{item}.yaml"))
        else:
            names = sorted(p.stem for p in DEMO_TASKS_DIR.glob("*.yaml"))
            raise ValueError(f"unknown task {item!r}: not a file, a folder or a bundled task ({', '.join(names)})")
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise ValueError(f"task name {task.name!r} appears twice; task names must be unique")
        seen.add(task.name)
    return tasks


def _read_rows(task: TaskSpec) -> list[dict[str, Any]]:
    if is_procedural(task.path):
        items = generate_items(family_of(task.path), task.size, task.seed, task.generator)
        return [{"prompt": e["question"], "answer": str(e["answer"]), "entry": e} for e in items]
    base = Path(task.source).parent if task.source else Path.cwd()
    local = Path(task.path) if Path(task.path).is_absolute() else base / task.path
    if local.suffix in _LOCAL_SUFFIXES and local.is_file():
        text = local.read_text(encoding="utf-8")
        if local.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"task {task.name!r}: {local} must hold a JSON list of rows")
        return rows
    if local.suffix in _LOCAL_SUFFIXES:
        raise FileNotFoundError(f"task {task.name!r}: data file {local} not found")
    import datasets  # hub datasets only when a task asks for one

    return list(datasets.load_dataset(task.path, task.subset, split=task.split))


def _mc_answer(task: TaskSpec, raw: Any, choices: list[str], row: int) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"task {task.name!r} row {row}: answer {raw!r} is not an index, letter or choice text")
    if isinstance(raw, int):
        index = raw
    elif isinstance(raw, str) and raw.strip() in choices:
        index = choices.index(raw.strip())
    elif isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in _LETTERS:
        index = _LETTERS.index(raw.strip().upper())
    elif isinstance(raw, str) and raw.strip().isdigit():
        index = int(raw.strip())
    else:
        raise ValueError(f"task {task.name!r} row {row}: answer {raw!r} is not an index, letter or choice text")
    if not 0 <= index < len(choices):
        raise ValueError(f"task {task.name!r} row {row}: answer index {index} outside {len(choices)} choices")
    return index


def load_examples(task: TaskSpec, exclude: Collection[str] = ()) -> TaskData:
    """The first ``few_shot`` rows are the shots; the rest are scored, but for those whose
    prompt is in ``exclude`` (the first ``limit`` of them)."""
    rows = _read_rows(task)
    examples: list[TaskExample] = []
    for i, row in enumerate(rows):
        for key in ("prompt", "answer") + (("choices",) if task.type == "mc" else ()):
            if task.column(key) not in row:
                raise ValueError(
                    f"task {task.name!r} row {i}: column {task.column(key)!r} ({key}) missing; row has {sorted(row)}"
                )
        prompt = str(row[task.column("prompt")])
        if task.type == "mc":
            choices = [str(c) for c in row[task.column("choices")]]
            if len(choices) < 2:
                raise ValueError(f"task {task.name!r} row {i}: a multiple-choice row needs >= 2 choices")
            examples.append(TaskExample(prompt, _mc_answer(task, row[task.column("answer")], choices, i), choices))
        else:
            examples.append(TaskExample(prompt, str(row[task.column("answer")]), entry=row.get("entry")))
    shots, scored = examples[: task.few_shot], examples[task.few_shot :]
    seen = {text.strip() for text in exclude}
    kept = [ex for ex in scored if ex.prompt.strip() not in seen]
    excluded, scored = len(scored) - len(kept), kept
    if task.limit is not None:
        scored = scored[: task.limit]
    if not scored:
        raise ValueError(
            f"task {task.name!r}: no examples left to score "
            f"(rows {len(rows)}, few_shot {task.few_shot}, in the training data {excluded})"
        )
    return TaskData(shots, scored, excluded)


def build_context(
    example: TaskExample, shots: list[TaskExample], template: str = DEFAULT_PROMPT_TEMPLATE, tokenizer=None
) -> str:
    """The text the model conditions on: each shot as ``template(prompt) + its answer``, a blank
    line, then ``template(prompt)`` of the example."""
    parts = []
    for shot in shots:
        answer = shot.choices[shot.answer] if shot.choices is not None else shot.answer
        parts.append(format_prompt(shot.prompt, template, tokenizer) + str(answer) + "\n\n")
    return "".join(parts) + format_prompt(example.prompt, template, tokenizer)
