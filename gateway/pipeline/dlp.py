"""Steps 7 and 10 of a call: tokenize PII on the way out, restore it on the way back.

The `dlp/` package knows how to find, tokenize and restore PII; this module knows which calls,
which fields and which entity types, from the action (`dlp_fields`, `detokenize_response`) and the
agent's policy (`dlp.tokenize`/`block`/`mask`, `dlp.reveal`, falling back to the config's `dlp:`
section), and where OpenAI's streams carry text (`OpenAiStreamShape`).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from connectors import fieldpath
from connectors.model import Action, UnknownFields
from dlp.children import Analyzer
from dlp.config import DlpConfig
from dlp.crypto import Sealer, load_master_key
from dlp.engine import PiiEngine, build_engine
from dlp.inbound import Detokenizer, FieldKey, Final, RevealSummary, SseDetokenizer
from dlp.outbound import Limits, Tokenizer, scope_key
from dlp.sync import ImmediateVault, run_now, stream_function
from dlp.vault import Entry, SqliteVault, StoreUnavailable, Vault, open_vault
from gateway.errors import Refusal
from gateway.identity.tokens import Identity
from gateway.policy.engine import DlpPolicy, PolicySet, Subject
from gateway.state import StateDir

log = logging.getLogger(__name__)


@dataclass
class CallDlp:
    """What one call's response needs: whose tokens, which types may be restored, and the tokens
    its request sent out (values held in memory for the life of the call only)."""

    scope: str
    reveal: frozenset[str]
    issued: dict[str, Entry] = field(default_factory=dict, repr=False)
    stream_summary: Callable[[], RevealSummary] | None = None


@dataclass
class Dlp:
    config: DlpConfig
    engine: PiiEngine
    vault: Vault
    tokenizer: Tokenizer
    detokenizer: Detokenizer

    @classmethod
    def build(cls, config: DlpConfig, state: StateDir) -> Dlp:
        engine = build_engine(config)
        sealer = Sealer.from_master(load_master_key(config.key, state.root))
        vault = open_vault(config.vault, state.root, sealer, config.token_ttl, config.purge_every)
        limits = Limits(config.max_field_chars, config.max_call_chars, config.chunk_chars)
        analyzer = Analyzer(engine, config, children=config.workers, inline_chars=config.inline_chars)
        tokenizer = Tokenizer(
            engine, vault, memo_size=config.memo_size, workers=config.workers, limits=limits, analyzer=analyzer
        )
        return cls(config, engine, vault, tokenizer, Detokenizer(vault))

    @property
    def default(self) -> DlpPolicy:
        c = self.config
        return DlpPolicy(frozenset(c.tokenize), frozenset(c.reveal), frozenset(c.block), frozenset(c.mask))

    def policy_for(self, policies: PolicySet | None, ident: Identity) -> DlpPolicy:
        if policies is None:
            return self.default
        return policies.dlp_for(Subject(ident.sub, ident.role, ident.tenant), self.default)

    def unsupported(self, entity_types: frozenset[str]) -> frozenset[str]:
        """Types a policy asks for that this engine cannot find (PERSON without an NLP model)."""
        return entity_types - set(self.config.entities)

    async def tokenize(self, action: Action, params: dict[str, Any], policy: DlpPolicy, call: CallDlp) -> dict[str, int]:
        """Replace PII in the action's DLP fields of `params` in place; counts per entity type.

        Refuses with `pii_blocked` if a field holds a type the policy blocks.
        """
        if not policy.scanned:
            return {}
        try:
            summary = await self.tokenizer.tokenize_body(
                params, scanned_fields(action, params), policy.tokenize, call.scope, call.issued, block=policy.block, mask=policy.mask
            )
        except StoreUnavailable:
            raise Refusal("store_unavailable", "the DLP vault is unavailable; nothing was sent") from None
        return summary.counts

    async def approver_view(self, action: Action, params: dict[str, Any], policy: DlpPolicy, scope: str) -> dict[str, Any]:
        """The call's parameters as an approver may see them: a copy scanned like the call itself,
        the policy's `tokenize` types as the very tokens the vendor will get (same value, same
        scope, same token) and every other type the engine finds masked, even one the policy lets
        leave as it is, since an approval record and its webhook notice must never hold a raw
        value. A type the policy blocks refuses here (`pii_blocked`), as the call would be later.
        The call's own parameters are not touched."""
        view = copy.deepcopy(params)
        shown = DlpPolicy(policy.tokenize, frozenset(), policy.block, frozenset(self.config.entities) - policy.tokenize - policy.block)
        await self.tokenize(action, view, shown, CallDlp(scope, frozenset()))
        return view

    async def restore_json(self, body: bytes, call: CallDlp) -> tuple[bytes, RevealSummary]:
        try:
            return await self.detokenizer.restore_json_bytes(body, call.scope, call.reveal)
        except StoreUnavailable:
            log.warning("DLP vault unavailable while restoring a response; tokens left in place")
            return body, RevealSummary()
        except ValueError:
            return body, RevealSummary()  # not JSON after all: leave it as the vendor sent it

    def sse_stream(self, call: CallDlp) -> Callable[[bytes], bytes]:
        """mitmproxy's stream function for an SSE response of this call (see `dlp.sync`)."""
        read = self.vault.resolve_now if isinstance(self.vault, SqliteVault) else None
        detok = SseDetokenizer(Detokenizer(ImmediateVault(call.issued, read)), call.scope, call.reveal, OpenAiStreamShape())
        call.stream_summary = lambda: detok.summary
        return stream_function(detok)

    def restore_now(self, call: CallDlp) -> Callable[[Any], Any]:
        """A function restoring this call's tokens in a JSON value, without waiting: the tokens
        its request sent out, and for a local vault anything else in the caller's scope (as in
        streams, `dlp.sync`). What it restored is added to `call`'s summary."""
        read = self.vault.resolve_now if isinstance(self.vault, SqliteVault) else None
        detok = Detokenizer(ImmediateVault(call.issued, read))
        summary = RevealSummary()
        call.stream_summary = lambda: summary

        def restore(value: Any) -> Any:
            restored, found = run_now(detok.restore_json(value, call.scope, call.reveal))
            withheld = Counter({(why, kind): n for why, kinds in found.withheld_by.items() for kind, n in kinds.items()})
            summary.add(Counter(found.restored), withheld)
            return restored

        return restore

    async def close(self) -> None:
        self.tokenizer.close()
        await self.vault.close()


def scope_of(ident: Identity) -> str:
    return scope_key(ident.tenant, ident.sub)


Field = tuple[FieldKey, dict[str, Any], str, Final]


class OpenAiStreamShape:
    """Where OpenAI streams carry text a token can be split across (a `dlp.inbound.StreamShape`).

    Chat completions: a choice's `delta.content` and each tool call's `function.arguments`, ended
    by the choice's `finish_reason`. Responses: `response.*_text.delta` and
    `response.function_call_arguments.delta` per output item, ended by the item's next event.
    """

    def __init__(self) -> None:
        self._base: dict[str, Any] = {}  # top-level fields of the last chat chunk, for flush events
        self._response_item: dict[FieldKey, Any] = {}

    def fields(self, event: dict[str, Any], held: Collection[FieldKey]) -> Iterator[Field]:
        choices = event.get("choices")
        if isinstance(choices, list):
            self._base = {k: v for k, v in event.items() if k not in ("choices", "usage")}
            for choice in choices:
                if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                    yield from self._choice(choice, held)
            return
        kind = event.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            key = ("response", event.get("output_index"), event.get("content_index"))
            if kind.endswith(("_text.delta", "_arguments.delta")) and isinstance(event.get("delta"), str):
                self._response_item[key] = {k: v for k, v in event.items() if k != "delta"}
                yield key, event, "delta", False
            elif key in held:
                yield key, event, "delta", "before"

    def _choice(self, choice: dict[str, Any], held: Collection[FieldKey]) -> Iterator[Field]:
        i, delta = choice.get("index", 0), choice["delta"]
        final = choice.get("finish_reason") is not None
        if final and ("content", i) in held and not isinstance(delta.get("content"), str):
            delta["content"] = ""
        if isinstance(delta.get("content"), str):
            yield ("content", i), delta, "content", final
        calls = delta.get("tool_calls")
        if final:
            present = {c.get("index") for c in calls or [] if isinstance(c, dict)}
            extra = [
                {"index": k[2], "function": {"arguments": ""}}
                for k in held
                if k[0] == "tool" and k[1] == i and k[2] not in present
            ]
            if extra:
                calls = delta["tool_calls"] = list(calls or []) + extra
        for call in calls or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                yield ("tool", i, call.get("index", 0)), fn, "arguments", final

    def flush_event(self, key: FieldKey, tail: str) -> dict[str, Any]:
        if key[0] == "content":
            return {**self._base, "choices": [{"index": key[1], "delta": {"content": tail}, "finish_reason": None}]}
        if key[0] == "tool":
            delta = {"tool_calls": [{"index": key[2], "function": {"arguments": tail}}]}
            return {**self._base, "choices": [{"index": key[1], "delta": delta, "finish_reason": None}]}
        return {**self._response_item.get(key, {}), "delta": tail}


def scanned_fields(action: Action, params: dict[str, Any]) -> tuple[str, ...]:
    """Every field of the call that holds text: the action's DLP fields, any other parameter with
    a string in it, and every field the model does not declare (passed by a `pass_scanned` action),
    numbers included. A field a connector forgot to list (`statement_descriptor`, `stop`, a URL) is
    scanned all the same; only numbers outside these (amounts, limits) are not."""
    undeclared = set(action.unknown_keys(params)) if action.unknown_fields is UnknownFields.PASS_SCANNED else set()
    return action.dlp_fields + tuple(
        fieldpath.format_keys((k,)) for k, v in params.items() if k in undeclared or _holds_text(v)
    )


def _holds_text(node: Any) -> bool:
    if isinstance(node, str):
        return True
    if isinstance(node, dict):  # its keys are text too (`logit_bias`: keys chosen by the agent)
        return bool(node) or any(_holds_text(v) for v in node.values())
    return isinstance(node, list) and any(_holds_text(v) for v in node)
