"""One response in OpenAI's chat or text-completion shape: its ``n`` choices, chunks and usage.

Each choice is one decode job of the engine and has its own text stream (stop strings end that
choice only). ``usage`` counts the prompt once and the completion tokens of every choice, as the
OpenAI API does for ``n`` > 1.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from brainstacks_pl.serve.jobs import RouteInfo
from brainstacks_pl.serve.text import TextStream

__all__ = ["Reply"]


class _Choice:
    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]):
        self.stream = TextStream(decode, stops)
        self.pending = ""
        self.end: str | None = None

    def finish_reason(self) -> str:
        return "stop" if self.stream.stopped or self.end in ("stop", "cancelled") else "length"


class Reply:
    """The text, ids and bookkeeping of one response with ``n`` choices."""

    def __init__(self, chat: bool, model: str, stops: list[str], decode, prompt_tokens: int, n: int = 1):
        self.chat, self.model, self.prompt_tokens = chat, model, prompt_tokens
        self.choices = [_Choice(decode, stops) for _ in range(n)]
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.info: RouteInfo | None = None

    def feed(self, index: int, token: int) -> bool:
        """Add a token to choice ``index``; True once a stop string was seen (later tokens are ignored)."""
        choice = self.choices[index]
        if not choice.stream.stopped:
            choice.pending += choice.stream.feed(token)
        return choice.stream.stopped

    def take(self, index: int) -> str:
        choice = self.choices[index]
        delta, choice.pending = choice.pending, ""
        return delta

    def usage(self) -> dict:
        completion = sum(len(choice.stream.tokens) for choice in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def _envelope(self, obj: str, info: bool = True) -> dict:
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        if info and self.info is not None:
            out["brainstacks"] = self.info.to_dict()
        return out

    def full(self) -> dict:
        """The whole response, once every choice has ended."""
        if self.chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.stream.text},
                    "logprobs": None,
                    "finish_reason": c.finish_reason(),
                }
                for i, c in enumerate(self.choices)
            ]
            return {**self._envelope("chat.completion"), "choices": choices, "usage": self.usage()}
        choices = [
            {"index": i, "text": c.stream.text, "logprobs": None, "finish_reason": c.finish_reason()}
            for i, c in enumerate(self.choices)
        ]
        return {**self._envelope("text_completion"), "choices": choices, "usage": self.usage()}

    def chunk(self, index: int, text: str = "", role: bool = False, finish: str | None = None) -> dict:
        """A stream chunk of choice ``index``; its first (``role``) and last (``finish``) carry the route."""
        info = role or finish is not None
        if self.chat:
            delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._envelope("chat.completion.chunk", info), "choices": [choice]}
        return {
            **self._envelope("text_completion", info),
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    def usage_chunk(self) -> dict:
        return {
            **self._envelope("chat.completion.chunk" if self.chat else "text_completion", info=False),
            "choices": [],
            "usage": self.usage(),
        }
