"""OpenAI chat-completions request and response models.

Fields follow the OpenAI spec's order; the extensions are in a labelled block. Every field we act on is
validated here, strictly (`"16"` and `true` are not integers), within what vLLM accepts, so a bad request fails
with a 400 before it reaches an engine. A field we do not act on is refused with a 400 naming it
(`unsupported_parameter`) unless it changes nothing: OpenAI's bookkeeping fields (`user`, `metadata`, `store`,
...) and any field sent with its "off" value (`null`, `false`, `[]`, `{}`). A client that sends a field can trust
that it was honoured.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.shared import ErrorObject
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 100_000
MAX_INT32 = 2**31 - 1  # vLLM's token counts and top_k travel as 32-bit integers

# Fields that change nothing we generate: accepted and ignored, as OpenAI's own server accepts them.
IGNORED_FIELDS = {
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "parallel_tool_calls",
}
# What a field we do not support may be sent as, meaning "off" (besides null).
OFF_VALUES = {"function_call": ["none"], "tool_choice": ["none"], "truncation": ["disabled"], "top_logprobs": [0]}


def _is_off(name: str, value: Any) -> bool:
    return value is None or value is False or value == [] or value == {} or value in OFF_VALUES.get(name, [])


def refuse_unsupported(extra: dict[str, Any]) -> None:
    """Refuse (400 naming it) any field beyond a model's own that would change what is generated."""
    for name, value in extra.items():
        if name not in IGNORED_FIELDS and not _is_off(name, value):
            raise UnsupportedParameter(name)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as the chat template sees it: its text, and every other field it was sent with
        (`name`, `tool_calls`, `tool_call_id`, ...), so the template can use or refuse them."""
        return {**(self.model_extra or {}), "role": self.role, "content": self.text()}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool = False


class JSONSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`text` (no constraint), `json_object` (any JSON object) or `json_schema` (JSON valid against the schema),
    applied by vLLM's structured outputs to the answer only: the reasoning before it stays free."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format.json_schema is required with type 'json_schema', and only then")
        return self


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: FunctionDefinition


class ThinkingConfig(BaseModel):
    """Anthropic's `thinking` block, accepted as an alias of `thinking_token_budget`."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = Field(None, ge=0, le=MAX_INT32)


Q = "What is 23+58?"
REQUEST_EXAMPLES = [  # shown in /docs, and what schemathesis starts from to reach the engines
    {"model": "lab-long", "messages": [{"role": "user", "content": Q}], "max_tokens": 200},
    {"model": "lab-short", "messages": [{"role": "user", "content": Q}], "stream": True},
    {"model": "lab-long", "messages": [{"role": "user", "content": Q}], "thinking_token_budget": 16, "seed": 1},
    {"model": "auto", "messages": [{"role": "user", "content": Q}], "reasoning_effort": "low"},
]


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"examples": REQUEST_EXAMPLES})

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str = Field(min_length=1, max_length=256, examples=["lab-long", "lab-short", "auto"])
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, description="token id -> bias added to its logit (-100..100)")
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
    max_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
    n: int = Field(1, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    tool_choice: str | dict[str, Any] | None = Field(
        None, description="'none' or 'auto'; 'required' and a named function are not supported (400)"
    )
    tools: list[Tool] | None = Field(None, max_length=128, description="needs a variant with a tool_parser")
    top_logprobs: int | None = Field(None, ge=0, le=20)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None

    # --- long2short extensions ---
    thinking_token_budget: int | None = Field(
        None, ge=-1, le=MAX_INT32, description="reasoning-token cap; -1 = unlimited"
    )
    include_reasoning: bool = True
    thinking: ThinkingConfig | None = None  # Anthropic-style alias
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="passed to the model's chat template (vLLM's extension), e.g. {'enable_thinking': false}"
    )
    top_k: int | None = Field(None, ge=-1, le=MAX_INT32)
    # vLLM's own sampling extensions (as its OpenAI server accepts them)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=MAX_INT32)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=2)

    @field_validator("messages")
    @classmethod
    def _bounded_content(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if sum(len(message.text()) for message in messages) > MAX_CONTENT_CHARS:
            raise ValueError(f"messages hold more than {MAX_CONTENT_CHARS} characters")
        return messages

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        if stop == "" or (isinstance(stop, list) and "" in stop):
            raise ValueError("stop sequences must not be empty")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for token, value in (bias or {}).items():
            if not token.isdigit() or int(token) > MAX_INT32:
                raise ValueError(f"logit_bias keys are token ids, got {token[:20]!r}")
            if not -100 <= value <= 100:
                raise ValueError("logit_bias values must be between -100 and 100")
        return bias

    @model_validator(mode="after")
    def _nothing_dropped(self) -> ChatCompletionRequest:
        refuse_unsupported(self.model_extra or {})
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.tool_choice not in (None, "none", "auto"):
            raise UnsupportedParameter("tool_choice", "only 'auto' and 'none' are supported")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @model_validator(mode="after")
    def _one_budget(self) -> ChatCompletionRequest:
        if self.thinking is not None and self.thinking_token_budget is not None:
            raise ValueError("give either thinking_token_budget or thinking, not both")
        if self.thinking is not None and self.thinking.type == "enabled" and self.thinking.budget_tokens is None:
            raise ValueError("thinking.budget_tokens is required when thinking.type is 'enabled'")
        return self

    def requested_budget(self) -> int | None:
        """The explicit thinking budget (None: not given; −1: unlimited)."""
        if self.thinking is not None:
            return 0 if self.thinking.type == "disabled" else self.thinking.budget_tokens
        return self.thinking_token_budget

    def effort(self) -> str | None:
        return "low" if self.reasoning_effort == "minimal" else self.reasoning_effort

    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprobs_wanted(self) -> int | None:
        """vLLM's `logprobs`: how many alternatives per token besides the sampled one (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"


class UnsupportedParameter(ValueError):
    """A field that would change what is generated and that this server does not honour (a 400 naming it)."""

    def __init__(self, name: str, why: str = "leave it out (or send null)"):
        super().__init__(f"{name[:60]!r} is not supported by this server; {why}")
        self.name = name


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def message(answer: str | None, reasoning: str | None, tool_calls: list[dict] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None}  # OpenAI's schema requires it
    if reasoning is not None:
        body["reasoning_content"] = reasoning
        body["reasoning"] = reasoning
    if tool_calls:
        body["tool_calls"] = tool_calls
    return body


def delta(
    answer: str | None = None, reasoning: str | None = None, role: bool = False, tool_calls: list[dict] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"role": "assistant"} if role else {}
    if reasoning:
        body["reasoning_content"] = reasoning
        body["reasoning"] = reasoning
    if answer:
        body["content"] = answer
    if tool_calls:
        body["tool_calls"] = [call | {"index": index} for index, call in enumerate(tool_calls)]
    return body


def token_logprobs(entries: list) -> list[dict[str, Any]]:
    """`TokenLogprob`s (server/engine.py) in OpenAI's shape."""

    def one(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return [one(text, logprob) | {"top_logprobs": [one(*alt) for alt in alts]} for text, logprob, alts in entries]


def logprobs(answer: list, reasoning: list | None) -> dict[str, Any]:
    """A choice's `logprobs`: the answer's tokens under `content`, as OpenAI has them, and the reasoning's under
    `reasoning_content` (the name of the reasoning field of the message), unless the reasoning is hidden."""
    body: dict[str, Any] = {"content": token_logprobs(answer), "refusal": None}
    if reasoning is not None:
        body["reasoning_content"] = token_logprobs(reasoning)
    return body


# --- response models: what /openapi.json documents. The `openai` SDK's own models (generated from OpenAI's
# published spec), extended with long2short's fields; tests/test_server_openai.py checks every response, chunk
# and error against the SDK's models.


class ReasoningMessage(ChatCompletionMessage):
    reasoning_content: str | None = Field(None, description="the reasoning (left out with include_reasoning false)")
    reasoning: str | None = Field(None, description="the same text, under vLLM's newer name")


class ReasoningChoice(Choice):
    message: ReasoningMessage
    reasoning_truncated: bool = Field(description="whether the thinking budget cut the reasoning")


class ChatCompletionResponse(ChatCompletion):
    choices: list[ReasoningChoice]


class ReasoningDelta(ChoiceDelta):
    reasoning_content: str | None = None
    reasoning: str | None = None


class ReasoningChunkChoice(ChunkChoice):
    delta: ReasoningDelta
    reasoning_truncated: bool | None = Field(None, description="on a choice's last chunk")


class ChatCompletionStreamChunk(ChatCompletionChunk):
    """One `data:` event of a streamed chat completion (the stream ends with `data: [DONE]`)."""

    choices: list[ReasoningChunkChoice]


class ErrorResponse(BaseModel):
    error: ErrorObject


def event_schemas(events: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI component schemas of server-sent event types (`name -> model or union`): FastAPI documents only
    JSON bodies. Each event's own definitions are named under it (`Name.Def`), so they never collide with the
    JSON bodies' definitions of the same name (the SDK has many a `Choice`)."""
    schemas: dict[str, Any] = {}
    for name, event in events.items():
        schema = TypeAdapter(event).json_schema(ref_template=f"#/components/schemas/{name}.{{model}}")
        schemas |= {f"{name}.{key}": value for key, value in schema.pop("$defs", {}).items()}
        schemas[name] = schema
    return schemas
