"""Steps 7 and 10 of a call: tokenize PII on the way out, restore it on the way back.

The `dlp/` package knows how to find, tokenize and restore PII; this module knows which calls,
which fields and which entity types, from the action (`dlp_fields`, `detokenize_response`) and the
agent's policy (`dlp.tokenize`, `dlp.reveal`, falling back to the config's `dlp:` section).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.model import Action
from dlp.config import DlpConfig
from dlp.crypto import Sealer, load_master_key
from dlp.engine import PiiEngine, build_engine
from dlp.inbound import Detokenizer, RevealSummary, SseDetokenizer
from dlp.outbound import Tokenizer, scope_key
from dlp.sync import ImmediateVault, stream_function
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
        vault = open_vault(config.vault, state.root, Sealer.from_master(load_master_key(config.key, state.root)), config.token_ttl)
        return cls(config, engine, vault, Tokenizer(engine, vault, memo_size=config.memo_size, workers=config.workers), Detokenizer(vault))

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
        if not action.dlp_fields or not policy.scanned:
            return {}
        try:
            summary = await self.tokenizer.tokenize_body(
                params, action.dlp_fields, policy.tokenize, call.scope, call.issued, block=policy.block, mask=policy.mask
            )
        except StoreUnavailable:
            raise Refusal("store_unavailable", "the DLP vault is unavailable; nothing was sent") from None
        return summary.counts

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
        detok = SseDetokenizer(Detokenizer(ImmediateVault(call.issued, read)), call.scope, call.reveal)
        call.stream_summary = lambda: detok.summary
        return stream_function(detok)

    async def close(self) -> None:
        self.tokenizer.close()
        await self.vault.close()


def scope_of(ident: Identity) -> str:
    return scope_key(ident.tenant, ident.sub)
