"""Token ids -> text deltas for streaming, with OpenAI's ``stop`` strings.

The whole completion is decoded again after each token (``skip_special_tokens``, as
``brainstacks generate`` prints it), so multi-byte characters split over tokens come out whole:
a text ending in U+FFFD is held back until the next token completes it. With stop strings, the
last ``max(len(stop)) - 1`` characters are held back too, since they may be the start of a stop
string; the completion ends before the first stop string and the stop string is not returned.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TextStream"]


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: list[str] | None = None):
        self.decode, self.stops = decode, list(stops or [])
        self.tokens: list[int] = []
        self.text = ""  # everything decoded so far (stop string cut off once seen)
        self.sent = 0  # characters of ``text`` handed out
        self.stopped = False
        self._hold = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, token: int) -> str:
        """Add one token; returns the text that is now safe to send (may be empty)."""
        self.tokens.append(token)
        text = self.decode(self.tokens)
        cut = min((i for i in (text.find(s, max(0, self.sent - self._hold)) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self._take(len(self.text))
        self.text = text
        if text.endswith("\ufffd"):
            return ""
        return self._take(len(text) - self._hold)

    def flush(self) -> str:
        """The rest, once generation has ended."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : end], end
        return delta
