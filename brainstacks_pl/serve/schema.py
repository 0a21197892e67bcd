"""Request bodies of the OpenAI API, validated strictly, and model names resolved to routes.

Every field a client may send is declared; an unknown field, a wrong type ("5" for an integer), a
value out of range (``n`` above ``MAX_CHOICES``) or a non-default value of a field this server
does not implement (penalties, logprobs, tools...) is a 400 in OpenAI's error shape, never a crash:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

Model names: ``RUN`` (the router decides when the run has one, else every stack), ``RUN:routed``,
``RUN:ungated`` (every stack at weight 1), ``RUN:base`` (no stack) and ``RUN:d1+d2`` (those
domains' stacks at weight 1). ``RUN`` is the run directory's name (``--served_name`` overrides it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from brainstacks_pl.serve.jobs import Route

__all__ = [
    "MAX_CHOICES",
    "ApiError",
    "ChatRequest",
    "CompletionRequest",
    "parse_request",
    "resolve_model",
    "chat_prompt",
    "model_ids",
]


class ApiError(Exception):
    """An HTTP error in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


MAX_CHOICES = 16
"""Most choices (``n``) one request may ask for: each is a row of the decode batch."""

# Fields of the OpenAI API this server accepts only at their default (they change nothing then).
_DEFAULT_ONLY = {
    "best_of": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": None,
    "top_logprobs": None,
    "logit_bias": None,
    "echo": False,
    "suffix": None,
    "tools": None,
    "tool_choice": None,
    "response_format": None,
}


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    def check_supported(self) -> None:
        """400 for a field this server implements only at its default, or a bad ``stop``."""
        for name, default in _DEFAULT_ONLY.items():
            allowed = (default, False) if default is None else (default,)  # logprobs: false means none too
            if name in type(self).model_fields and getattr(self, name) not in allowed:
                raise ApiError(
                    400, f"{name}={getattr(self, name)!r} is not supported by this server (only {default!r})", name
                )
        stops = self.stops()
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop takes at most 4 non-empty strings", "stop")

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    best_of: int = 1
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None

    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(
                400, f"prompt: this server answers one prompt per request, got a list of {len(self.prompt)}", "prompt"
            )
        return self.prompt[0]


def parse_request(kind: type[_Sampling], body: object) -> _Sampling:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        request = kind.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        loc = [
            str(part)
            for part in first["loc"]
            if not (isinstance(part, str) and part in {"str", "list[str]", "list[TextPart]"})
        ]
        param = ".".join(loc) or None
        if first["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        else:
            message = f"{param}: {first['msg']}" if param else first["msg"].removeprefix("Value error, ")
        raise ApiError(400, message, param) from None
    request.check_supported()
    return request


def chat_prompt(messages: list[Message]) -> str:
    """The conversation as one prompt, in the canonical form every command renders
    (``prompts.prompt_text``): a lone user message as is (so the server answers exactly
    what ``brainstacks generate --prompt`` answers), otherwise ``Role: text`` turns."""
    from brainstacks_pl.prompts import prompt_text

    return prompt_text([(m.role, m.text()) for m in messages])


def model_ids(name: str, domains: list[str], has_router: bool) -> list[str]:
    """Every model name ``GET /v1/models`` lists."""
    modes = ["routed"] * has_router + ["ungated", "base"]
    return [name, *(f"{name}:{mode}" for mode in modes), *(f"{name}:{d}" for d in domains)]


def resolve_model(model: str, name: str, domains: list[str], has_router: bool) -> Route:
    """``RUN[:routed|ungated|base|d1+d2]`` -> Route, or a 400 that lists the valid names."""
    run, _, suffix = model.partition(":")
    if run != name:
        raise ApiError(
            400,
            f"The model '{model}' does not exist: this server serves '{name}' ('{name}:routed', '{name}:base', "
            f"'{name}:ungated', '{name}:DOMAIN+DOMAIN'); see GET /v1/models",
            "model",
            "model_not_found",
        )
    if suffix in ("", "routed"):
        if has_router:
            return Route("routed")
        if suffix:
            raise ApiError(
                400,
                f"'{model}': this run has no trained router; use '{name}:ungated', '{name}:base' or pin domains",
                "model",
                "model_not_found",
            )
        return Route("ungated")
    if suffix in ("ungated", "base"):
        return Route(suffix)
    pinned = suffix.split("+")
    unknown = [d for d in pinned if d not in domains]
    if unknown or len(set(pinned)) != len(pinned):
        raise ApiError(
            400,
            f"'{model}': unknown or repeated domain(s) {unknown or pinned}; this run has stacks for {domains}",
            "model",
            "model_not_found",
        )
    return Route("pinned", tuple(d for d in domains if d in pinned))
