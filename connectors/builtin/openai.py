"""OpenAI: chat completions (streamed or not), embeddings and responses.

Message content may be a string or a list of typed parts; DLP scans every string under the named
fields, so both shapes are covered by one path. A conversation sent back holds the model's own
tool calls (JSON arguments inside a JSON string) and the participants' `name`s, and `metadata` and
`stop` are free text too: all are DLP fields. Responses `input` items (messages, function calls
and their outputs) are scanned whole.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.model import Action, Connector, Credential


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class ChatCompletions(_Params):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = None
    n: int | None = Field(default=None, ge=1, le=16)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: str | None = None


class Embeddings(_Params):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None


class Responses(_Params):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = None
    max_output_tokens: int | None = Field(default=None, gt=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    truncation: str | None = None
    user: str | None = None


CONNECTOR = Connector(
    name="openai",
    description="OpenAI API",
    hosts=("api.openai.com",),
    credential=Credential(
        secret="openai", strip_headers=("authorization", "openai-organization", "openai-project")
    ),
    actions=(
        Action("chat_completions", "POST", "/v1/chat/completions", ChatCompletions,
               dlp_fields=("messages[*].content", "messages[*].tool_calls[*].function.arguments", "messages[*].name",
                           "messages[*].refusal", "metadata.*", "stop", "user"),
               detokenize_response=True),
        Action("embeddings", "POST", "/v1/embeddings", Embeddings, dlp_fields=("input", "user")),
        Action("responses", "POST", "/v1/responses", Responses,
               dlp_fields=("input", "instructions", "metadata.*", "user"), detokenize_response=True),
    ),
)
