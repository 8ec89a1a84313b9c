"""The guest's one way out: the host import `egress.http_request` (ABI in sandbox/ABI.md).

Every call is checked here before it leaves, in this order, and each refusal comes back to the guest
as an ordinary HTTP response carrying the gateway's JSON error body (the same shape the proxy gives),
never as a trap, so a tool can report it:

1. the run's host-call budget (`limits.max_host_calls`): calls past it are refused and not counted;
2. the run's wall-clock deadline (a call cannot be interrupted once sent, so none starts late);
3. the manifest's ceiling: the URL must map to a connector action (`resolve_action`) that the
   manifest's `allowed` list names; an unknown URL is refused too;
4. then the caller's `http_request` sends it (in production through the gateway's own proxy, where
   the whole pipeline applies under the agent's identity narrowed to the manifest).

A refusal here carries the run's own decision id (`EgressSession.decision_id`, the gateway's `dec_`
id of the `POST /v1/sandbox/run` call), so what the tool saw joins the run's audit record.

The import's callback runs on the thread that runs the wasm, so a run's state is found through a
thread-local set for the duration of the run. The callback never raises: wasmtime-py keeps a raised
exception in a process-global slot that another thread's trap could pick up.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import wasmtime
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import Refusal, SandboxError
from sandbox.manifest import ToolManifest

HttpRequest = Callable[[dict[str, Any]], dict[str, Any]]
ResolveAction = Callable[[str, str], "tuple[str, str] | None"]

# ABI return codes (negative i32); keep in step with sandbox/tools/include/egress.h and ABI.md.
EFAULT = -1  # a pointer/length pair outside the guest's memory, or no exported memory
EINVAL = -2  # the request is not the JSON shape of the ABI, or is over MAX_REQUEST_BYTES
ENOPENDING = -3  # req_len == 0 but no response is held

MAX_REQUEST_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Headers a tool may not set: proxy credentials and hop-by-hop framing belong to the host's client.
_DROPPED_HEADERS = frozenset(
    {
        "proxy-authorization", "proxy-connection", "connection", "keep-alive", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length",
    }
)


class GuestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(pattern=r"^[A-Za-z]{1,16}$")
    url: str = Field(pattern=r"^https?://", max_length=8192)
    headers: dict[str, str] = {}
    body: str | None = ""


class GuestResponse(BaseModel):
    """What an `http_request` callable must return; anything else is refused (fail closed)."""

    status: int = Field(ge=100, le=599)
    headers: dict[str, str] = {}
    body: str = ""


class AbiError(SandboxError):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@dataclass
class EgressSession:
    """One run's host calls: the ceiling, the budget and the response held for a second read."""

    manifest: ToolManifest
    http_request: HttpRequest
    resolve_action: ResolveAction
    deadline: float  # time.monotonic() after which no call starts
    clock: Callable[[], float]
    decision_id: str  # the run's decision id, in every refusal the guest receives
    calls: int = 0
    held: bytes | None = None

    def request(self, raw: bytes) -> bytes:
        """The JSON response to the guest's JSON request `raw`; AbiError for a malformed request."""
        if len(raw) > MAX_REQUEST_BYTES:
            raise AbiError(EINVAL)
        try:
            req = GuestRequest.model_validate_json(raw)
        except ValidationError:
            raise AbiError(EINVAL) from None
        self.held = None
        return json.dumps(self._decide(req), separators=(",", ":")).encode()

    def _decide(self, req: GuestRequest) -> dict[str, Any]:
        try:
            return self._send(req)
        except Refusal as r:
            return _refused(r, self.decision_id)

    def _send(self, req: GuestRequest) -> dict[str, Any]:
        """The sender's answer, or a `Refusal` from the first check that fails (module docstring)."""
        limit = self.manifest.limits.max_host_calls
        if self.calls >= limit:
            raise Refusal("sandbox_forbidden", f"limits.max_host_calls ({limit}) is used up")
        self.calls += 1
        if self.clock() >= self.deadline:
            raise Refusal("sandbox_timeout", "limits.timeout_ms has passed; no host call starts")
        method = req.method.upper()
        resolved = self.resolve_action(method, req.url)
        if resolved is None:
            raise Refusal("sandbox_forbidden", f"{method} to this URL matches no connector action")
        connector, action = resolved
        if not self.manifest.allows(connector, action):
            raise Refusal(
                "sandbox_forbidden",
                f"tool {self.manifest.name!r} manifest does not allow {connector}:{action}",
                connector=connector,
                action=action,
            )
        outbound = {
            "method": method,
            "url": req.url,
            "headers": {k: v for k, v in req.headers.items() if k.lower() not in _DROPPED_HEADERS},
            "body": req.body or "",
        }
        try:
            answer = GuestResponse.model_validate(self.http_request(outbound))
        except Refusal:
            raise
        except ValidationError:
            raise Refusal("internal_error", "the host's http_request returned a malformed response") from None
        except Exception as e:  # noqa: BLE001 - fail closed; the type only, a message may hold a URL or token
            raise Refusal("upstream_failed", f"host call failed ({type(e).__name__})") from None
        if len(answer.body) > MAX_RESPONSE_BYTES:
            raise Refusal("body_too_large", f"the response is over {MAX_RESPONSE_BYTES} bytes")
        return answer.model_dump()


def _refused(refusal: Refusal, decision_id: str) -> dict[str, Any]:
    """A refusal as the tool sees a host call's answer: the same rendering the proxy sends."""
    answer = refusal.to_http(decision_id)
    return {
        "status": answer.status,
        "headers": {name.lower(): value for name, value in answer.headers.items()},
        "body": answer.body.decode(),
    }


_current = threading.local()


@contextmanager
def bound(session: EgressSession) -> Iterator[None]:
    """Make `session` the one the import serves on this thread while the run lasts."""
    _current.session = session
    try:
        yield
    finally:
        _current.session = None


def current() -> EgressSession | None:
    """The session bound to this thread, for other imports that reach the same path (python_guest)."""
    return getattr(_current, "session", None)


def define_import(linker: wasmtime.Linker) -> None:
    """Define `egress.http_request(req_ptr, req_len, resp_ptr, resp_cap) -> i32` on `linker`."""
    i32 = wasmtime.ValType.i32()
    ty = wasmtime.FuncType([i32, i32, i32, i32], [i32])
    linker.define_func("egress", "http_request", ty, _http_request, access_caller=True)


def _http_request(caller: wasmtime.Caller, req_ptr: int, req_len: int, resp_ptr: int, resp_cap: int) -> int:
    try:
        return _serve(caller, req_ptr & 0xFFFFFFFF, req_len & 0xFFFFFFFF, resp_ptr & 0xFFFFFFFF, resp_cap & 0xFFFFFFFF)
    except AbiError as e:
        return e.code
    except Exception:  # noqa: BLE001 - never raise into wasmtime-py (see the module docstring)
        return EFAULT


def _serve(caller: wasmtime.Caller, req_ptr: int, req_len: int, resp_ptr: int, resp_cap: int) -> int:
    session = current()
    memory = caller.get("memory")
    if session is None or not isinstance(memory, wasmtime.Memory):
        raise AbiError(EFAULT)
    size = memory.data_len(caller)
    if resp_ptr + resp_cap > size:
        raise AbiError(EFAULT)
    if req_len > 0:
        if req_ptr + req_len > size:
            raise AbiError(EFAULT)
        response = session.request(bytes(memory.read(caller, req_ptr, req_ptr + req_len)))
    elif session.held is not None:
        response = session.held
    else:
        raise AbiError(ENOPENDING)
    if len(response) > 0x7FFFFFFF:
        raise AbiError(EINVAL)
    if len(response) <= resp_cap:
        memory.write(caller, response, resp_ptr)
        session.held = None
    else:
        session.held = response
    return len(response)
