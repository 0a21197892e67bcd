"""lm-evaluation-harness model type ``brainstacks``: a run directory in base / ungated / routed mode.

    python -m brainstacks_pl.evaluation.lm_eval_adapter run --model brainstacks \\
        --model_args run=runs/demo,mode=routed --tasks arc_easy --limit 100

or from Python (importing this module registers the model type)::

    import lm_eval, brainstacks_pl.evaluation.lm_eval_adapter
    lm_eval.simple_evaluate(model="brainstacks", model_args="run=runs/demo,mode=ungated", tasks=[...])

model_args: ``run`` (required), ``mode`` (base | ungated | routed; default ungated), ``device``,
``dtype``, ``batch_size``, ``max_gen_toks`` (256), ``template`` (false: contexts as lm-eval
writes them, like any HF model; true: wrapped in the run's SFT prompt template, the format
the stacks were trained on), ``model_name_or_path``, ``quantization``.

lm-eval has no plugin discovery for model types, so its own ``lm_eval`` command does not see
``brainstacks``; the ``python -m`` form above registers it first and then runs lm-eval's CLI.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from brainstacks_pl.evaluation.engine import ScoreRequest, StackScorer
from brainstacks_pl.evaluation.scoring import encode_pair, encode_prompt
from brainstacks_pl.prompts import format_prompt

log = logging.getLogger(__name__)

__all__ = ["BrainstacksLM", "main"]


@register_model("brainstacks")
class BrainstacksLM(LM):
    """lm-eval ``LM`` over a ``StackScorer``: every request runs in the chosen mode."""

    def __init__(
        self,
        run: str | None = None,
        mode: str = "ungated",
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int | str | None = 16,
        max_gen_toks: int = 256,
        template: bool = False,
        model_name_or_path: str | None = None,
        quantization: str | None = None,
        scorer: StackScorer | None = None,
        **ignored: Any,
    ):
        super().__init__()
        ignored = {k: v for k, v in ignored.items() if v is not None}
        if ignored:
            log.warning("brainstacks lm-eval model ignores %s", sorted(ignored))
        batch = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        if scorer is None:
            if run is None:
                raise ValueError("model_args needs run=RUN_DIR (a brainstacks run directory)")
            if device and device.startswith("cuda") and not torch.cuda.is_available():
                log.warning("device %s requested (lm-eval's default) but CUDA is not available: using the CPU", device)
                device = "cpu"
            scorer = StackScorer.from_run(
                run,
                mode,
                batch,
                device=device or "cpu",
                dtype=dtype,
                model_name_or_path=model_name_or_path,
                quantization=quantization,
            )
        self.scorer = scorer if scorer.mode == mode else scorer.with_mode(mode)
        self.max_gen_toks, self.template = int(max_gen_toks), bool(template)

    # ------------------------------------------------------------------ helpers
    @property
    def tokenizer(self):
        return self.scorer.tokenizer

    @property
    def max_length(self) -> int:
        return self.scorer.max_length or 2048

    def _context(self, text: str) -> str:
        return format_prompt(text, self.scorer.generator.template) if self.template else text

    def _prefix_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    # ------------------------------------------------------------------ LM API
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        prepared = []
        for req in requests:
            context, continuation = req.args
            prepared.append(
                ScoreRequest(
                    *encode_pair(self.tokenizer, self._context(context), continuation), route_text=context or " "
                )
            )
        scores = self.scorer.loglikelihood(prepared)
        out = []
        for req, score in zip(requests, scores):
            self.cache_hook.add_partial("loglikelihood", req.args, (score.logprob, score.is_greedy))
            out.append((score.logprob, score.is_greedy))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        prepared, owners = [], []
        for index, req in enumerate(requests):
            (text,) = req.args
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            windows = get_rolling_token_windows(tokens, self._prefix_id(), self.max_length, context_len=1)
            for context, pred in map(make_disjoint_window, windows):
                prepared.append(ScoreRequest(list(context), list(pred), route_text=text or " "))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, score in zip(owners, self.scorer.loglikelihood(prepared)):
            totals[owner] += score.logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests) -> list[str]:
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for index, req in enumerate(requests):
            _, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0) or 0) > 0:
                log.warning("brainstacks lm-eval model decodes greedily; ignoring sampling settings %s", kwargs)
            groups.setdefault((tuple(until), int(kwargs.get("max_gen_toks", self.max_gen_toks))), []).append(index)
        out: list[str] = [""] * len(requests)
        for (until, max_new), indices in groups.items():
            contexts = [requests[i].args[0] for i in indices]
            prompts = [encode_prompt(self.tokenizer, self._context(c)) for c in contexts]
            texts = self.scorer.generate(prompts, [c or " " for c in contexts], max_new, until)
            for i, text in zip(indices, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with the ``brainstacks`` model type registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
