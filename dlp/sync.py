"""Detokenizing a stream inside mitmproxy's synchronous stream hook.

mitmproxy hands each response chunk to `flow.response.stream(chunk)` and sends whatever that
returns at once; the function cannot await. The stream detokenizers are coroutines because the
vault may be remote, so here they are given a vault view that answers without waiting on any I/O:
the tokens this very call sent out (captured when its request was tokenized: what an LLM echoes
back) and, for a local SQLite vault, a synchronous read of anything else in the caller's scope.
With such a view their coroutines finish in one step, and `run_now` drives them without an event
loop. A token a remote (Redis) vault would have to be asked for stays a token in the stream; the
agent can still restore it through `POST /v1/detokenize`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine
from typing import Any, Protocol, TypeVar

from dlp.vault import Entry

T = TypeVar("T")
SyncRead = Callable[[str, Collection[str]], dict[str, Entry]]


class StreamDetokenizer(Protocol):
    async def feed(self, chunk: bytes) -> bytes: ...

    async def finish(self) -> bytes: ...


class ImmediateVault:
    """A read-only vault view that never suspends: known entries first, then a synchronous read."""

    def __init__(self, known: dict[str, Entry], read: SyncRead | None) -> None:
        self._known = known
        self._read = read

    async def resolve(self, scope: str, tokens: Collection[str]) -> dict[str, Entry]:
        found = {t: self._known[t] for t in tokens if t in self._known}
        missing = [t for t in tokens if t not in found]
        if missing and self._read is not None:
            found.update(self._read(scope, missing))
        return found


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that completes without suspending; an error if it would wait."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a stream detokenizer tried to wait on I/O inside mitmproxy's stream hook")


def stream_function(detokenizer: StreamDetokenizer) -> Callable[[bytes], bytes]:
    """mitmproxy's `response.stream` callable: each chunk in, what may be sent now out; b"" ends."""

    def modify(chunk: bytes) -> bytes:
        return run_now(detokenizer.feed(chunk) if chunk else detokenizer.finish())

    return modify
