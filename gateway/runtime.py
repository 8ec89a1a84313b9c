"""Everything a running gateway holds, built once from the config and shared by the proxy and API."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import certifi

from connectors import registry as connector_registry
from connectors.model import canonical_host
from connectors.registry import Registry
from gateway import access_log, attest
from gateway.audit.feed import AuditChainsFeed
from gateway.audit.log import AuditError, AuditLog
from gateway.audit.noise import UnauthenticatedNoise
from gateway.config import Config
from gateway.connector_admin import ConnectorAdmin, build_registry
from gateway.errors import ConfigError, Refusal
from gateway.identity import keys as keyring
from gateway.identity.issuers import TrustedIssuers
from gateway.identity.keys import KeyRing
from gateway.identity.quarantine import Change, Quarantines
from gateway.identity.revocation import Revocations
from gateway.identity.tokens import ADMIN_ROLE, METRICS_ROLE, Identity, SigningKey, Verifier
from gateway.live_decisions import LiveDecisions
from gateway.mcp.schema import SchemaCache
from gateway.mcp.store import McpStore
from gateway.metrics import Metrics
from gateway.pipeline.breaker import Breaker
from gateway.pipeline.dlp import Dlp
from gateway.pipeline.egress import Resolver
from gateway.pipeline.quota import Quotas
from gateway.policy.approvals import ApprovalStore
from gateway.policy.load import PolicyLoadError
from gateway.policy.store import PolicyStore
from gateway.policy.webhook import ApprovalWebhook
from gateway.sandbox_service import Tools
from gateway.secrets import Secrets, not_ready
from gateway.state import StateDir
from gateway.stores import open_state
from gateway.stores.feed import DecisionFeed, MemoryFeed
from gateway.stores.sessions import SessionStore
from gateway.telemetry import traceparent_ids
from gateway.telemetry.baseline import BaselineFile, BaselineRequest, Baselines, agent_key
from gateway.telemetry.export import SiemExport

if TYPE_CHECKING:
    from gateway.pipeline.call import Call
    from gateway.telemetry.tracing import Tracing

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    config: Config
    state: StateDir
    registry: Registry
    key: SigningKey  # signs tokens and the audit log: `keys.signing`
    revocations: Revocations
    quarantine: Quarantines
    verifier: Verifier
    resolver: Resolver
    secrets: Secrets
    audit: AuditLog
    breaker: Breaker
    policies: PolicyStore | None
    quotas: Quotas
    approvals: ApprovalStore
    dlp: Dlp
    tools: Tools
    attested: dict[str, str]  # artifact -> sha256:HEX at start (gateway.attest)
    mcp: McpStore
    connectors: ConnectorAdmin
    console_sessions: SessionStore  # the console's sessions, shared by every process (`gateway.api.sessions`)
    keys: KeyRing | None = None  # every key that verifies (JWKS); None: `key` alone
    webhook: ApprovalWebhook | None = None
    tracing: Tracing | None = None  # telemetry.otlp_endpoint set
    siem: SiemExport | None = None  # audit.export set
    baselines: Baselines | None = None  # anomaly set
    baseline_file: BaselineFile | None = None
    metrics: Metrics = field(default_factory=Metrics)
    noise: UnauthenticatedNoise = field(default_factory=UnauthenticatedNoise)
    decisions: DecisionFeed = field(default_factory=MemoryFeed)  # GET /v1/decisions
    worker: int | None = None  # this process's index under `run --workers N`; None: the only process
    live: LiveDecisions = field(default_factory=LiveDecisions)  # the live decision streams (`/v1/decisions/stream`)
    mcp_schemas: SchemaCache = field(default_factory=SchemaCache)  # pinned input schemas, compiled once per process

    @cached_property
    def allow_hosts(self) -> frozenset[str]:
        return frozenset(canonical_host(h) for h in self.config.egress.allow)

    def record(self, rec: dict[str, Any]) -> None:
        """One audit record: to the tamper-evident log, the recent-decisions view and the metrics.

        Raises `Refusal("store_unavailable")` when the log cannot be written (disk full, read-only,
        closed): a call that cannot be audited is not made (fail closed). Use `record_after` for
        records that can no longer change what happens.
        """
        try:
            held = self.audit.write(rec)
        except (OSError, AuditError) as e:
            log.error("audit log write failed (%s); decision %s refused", type(e).__name__, rec.get("decision_id"))
            raise Refusal("store_unavailable", "the audit log cannot be written; nothing was sent") from None
        self._count(rec)
        self._publish(held)

    def record_after(self, rec: dict[str, Any]) -> bool:
        """A record of a refusal already given or an outcome already happened: a failed write is
        logged (with the decision id, never the record's content), never raised, because raising
        here would only turn a JSON refusal into mitmproxy's HTML page or lose a vendor's answer.
        Refusals because no token verified are aggregated per source (`gateway.audit.noise`), and
        only what the audit log holds goes on to the access log, the decision views and the SIEM:
        a flood without a token must not fill the SIEM's queue and drop the agents' events.
        False when `rec` itself was held back (counted into a later summary)."""
        admitted = self.noise.admit(rec)
        shown = list(admitted)  # as the audit log holds each, once written
        try:
            for i, record in enumerate(admitted):
                shown[i] = self.audit.write(record)
        except (OSError, AuditError) as e:
            log.error(
                "audit log write failed (%s); %s record of decision %s lost",
                type(e).__name__, rec.get("phase"), rec.get("decision_id"),
            )
            self.metrics.audit_failure()
        self._count(rec)
        for record in shown:
            self._publish(record)
        return any(record is rec for record in admitted)

    def _count(self, rec: dict[str, Any]) -> None:
        """Metrics and behaviour baselines: every record, held back or not (counts stay exact)."""
        if rec.get("phase") == "decision":
            self.metrics.decision(rec.get("connector"), rec.get("action"), rec["decision"], rec.get("code"))
            if self.baselines is not None and rec.get("sub") is not None and rec.get("role") is not None:
                key = agent_key(rec.get("tenant"), rec["sub"], rec["role"], self.baselines.settings.key)
                self.baselines.count(key, rec["decision"] == "deny")

    def _publish(self, rec: dict[str, Any]) -> None:
        """The views of what the audit log holds: recent decisions, live streams, access log, SIEM.
        Only this process's records: the other processes' reach the live streams through the
        decisions feed (`DecisionFeed.run`), never these counters and exports a second time."""
        self.decisions.append(rec)
        self.live.publish(rec)
        access_log.note(rec, self.config.log_format)
        if self.siem is not None:
            self.siem.offer(rec)

    def agent_key(self, ident: Identity) -> str:
        """Whose behaviour baseline a call belongs to (`anomaly.key`)."""
        return agent_key(ident.tenant, ident.sub, ident.role, self.config.anomaly.key if self.config.anomaly else "sub")

    def check_quarantine(self, ident: Identity, connector: str | None = None) -> None:
        """Refuse an agent under quarantine (itself, its tenant, the connector, or everything).
        Admin and metrics tokens are never stopped by it: an operator must be able to release."""
        if ident.role in (ADMIN_ROLE, METRICS_ROLE):
            return
        found = self.quarantine.hit(ident.sub, ident.tenant, connector)
        if found is not None:
            raise Refusal("quarantined", f"{found.describe()} is quarantined; an operator must release it")

    def quarantine_agent(self, ident: Identity, reason: str) -> None:
        """An anomaly rule's quarantine of the calling agent; its streams are cut by the sweep."""
        for change in self.quarantine.set("sub", ident.sub, release=False, reason=reason, by="anomaly"):
            self.quarantine_changed(change)

    def quarantine_changed(self, change: Change) -> None:
        """Every quarantine and release is logged by each gateway process that learns of it, and
        audited, and so exported to the SIEM, by exactly one: the first to claim it in the store
        (whichever door made it: the CLI only writes the store, the API and an anomaly rule are
        one process among several). A store that cannot be asked gets it recorded here all the same:
        a duplicate is better than a kill switch without a record."""
        log.warning("%s %s by %s: %s", change.describe(), "released" if change.released else "quarantined", change.by,
                    change.reason)
        try:
            mine = self.quarantine.claim(change)
        except self.quarantine.store_errors as e:
            log.warning("cannot claim quarantine change %d for the audit (%s); recording it here", change.id, e)
            mine = True
        if not mine:
            return
        self.record_after({
            "decision_id": f"qua_{change.id}", "time": round(change.at, 6), "phase": "quarantine",
            "decision": "release" if change.released else "quarantine", "scope": change.scope,
            "value": change.value, "reason": change.reason, "by": change.by,
        })

    def baseline_requested(self, request: BaselineRequest) -> None:
        """A baseline reset or ratify asked for by the CLI, applied by every gateway process on the
        state dir and audited (and exported) by the one that claimed it (`BaselineFile.take_requests`)."""
        self.record_after({
            "decision_id": f"bln_{request.id}", "time": round(request.at, 6), "phase": "baseline",
            "decision": request.verb, "agent": request.agent, "by": "cli",
        })

    def traceparent(self, call: Call, agent_header: str | None) -> str | None:
        """What the vendor gets as `traceparent` with `telemetry.propagate`: the decision's span,
        or when the decision is not traced the agent's own header when it is well formed."""
        if self.tracing is not None and call.trace is not None:
            return self.tracing.traceparent(call.trace)
        return agent_header.strip() if agent_header and traceparent_ids(agent_header) else None

    def attestation(self) -> dict[str, str]:
        """What was attested at start, with the policy bundle as it is now (it may have reloaded)."""
        if self.policies is None:
            return dict(self.attested)
        return {**self.attested, "policies": f"sha256:{self.policies.current.digest}"}

    def credentials_not_ready(self) -> dict[str, str]:
        """Connectors in use whose credential cannot be read (`gateway.secrets.not_ready`)."""
        return not_ready(self.registry, self.secrets, self.policies.current.connectors if self.policies else frozenset())

    def close(self) -> None:
        self.resolver.close()
        if self.tracing is not None:
            self.tracing.close()
        if self.siem is not None:
            self.siem.stop()
        self.secrets.close()
        self.tools.close()
        self.connectors.store.close()
        self.approvals.close()
        self.mcp.close()
        self.console_sessions.close()
        try:
            for summary in self.noise.flush():
                self.audit.write(summary)
        finally:
            self.audit.close()


def upstream_bundle(state: StateDir, extra: Path | None) -> Path:
    """System CAs plus `upstream_ca`: mitmproxy takes one bundle, and the system CAs must still apply."""
    data = Path(certifi.where()).read_bytes()
    if extra is not None:
        try:
            data += b"\n" + extra.expanduser().read_bytes()
        except OSError as e:
            raise ConfigError(f"upstream_ca {extra}: {e.strerror}") from None
    state.upstream_bundle.write_bytes(data)
    return state.upstream_bundle


def build(config: Config, worker: int | None = None) -> Runtime:
    """The runtime of the only process (`worker` None) or of one of `run --workers N`'s workers."""
    state = StateDir.open(config.state_path)
    # Keys first: a fleet without shared keys is refused for that, whatever else is wrong.
    ring = keyring.load(config, state)
    webhook = None
    if config.approvals_webhook:  # trusts what upstream calls trust: the system CAs and upstream_ca
        webhook = ApprovalWebhook(config.approvals_webhook, upstream_bundle(state, config.upstream_ca))
    stores = open_state(config, state, on_new_approval=webhook.submit if webhook else None, worker=worker)
    registry = build_registry(config, stores.connectors)
    config.check_secrets(c.credential.secret for c in registry if c.credential)
    for host in config.upstreams:
        if not registry.claims(host) and host not in config.egress.allow:
            log.warning("upstreams: %s is claimed by no connector or egress.allow entry", host)
    key = ring.signing
    routes = {h: a for h in config.upstreams if (a := config.upstream_address(h)) is not None}
    policies = None
    if config.policies is None:
        log.warning("no policies configured: token scopes alone decide (no parameter rules, approvals or quotas)")
    else:
        try:
            policies = PolicyStore(config.policies, registry.get, pin=_pinned(config, "policies"))
        except PolicyLoadError as e:
            raise ConfigError(f"policies in {config.policies} do not load:\n" + "\n".join(map(str, e.problems))) from None
    tools = Tools.build(config, state, key, registry, stores.tools)
    # Before the DLP models load (seconds), the audit log opens and the secret store is read: a
    # gateway that fails attestation says so at once and leaves no trace of having served.
    attested = attest.collect(
        policies.current.digest if policies else None, connector_registry.references(config.module_connectors()), config.dlp, tools.registry
    )
    attest.check(config.attest.pin, attested)
    attest.record(state, attested)
    dlp = build_dlp(config, state, policies)
    audit = audit_log(config, state, key, worker)
    rt = Runtime(
        config=config,
        state=state,
        registry=registry,
        key=key,
        keys=ring,
        revocations=stores.revocations,
        quarantine=stores.quarantine,
        verifier=Verifier(
            ring.verifying, stores.revocations, config.max_token_ttl, config.token_leeway, config.metrics_token_ttl,
            issuers=TrustedIssuers.build(config),
        ),
        resolver=Resolver(routes),
        secrets=Secrets.from_config(config.secret_refs, config.secrets_refresh, config.secrets_max_stale,
                                    config.secrets_allow_plaintext),
        audit=audit,
        worker=worker,
        breaker=Breaker(config.breaker.failures, config.breaker.reset, config.breaker.agents),
        policies=policies,
        quotas=Quotas.from_uri(config.stores.rate_limits),
        approvals=stores.approvals,
        # Workers on one host without a shared store read the feed back from every worker's chain.
        decisions=AuditChainsFeed(state, audit.path) if worker is not None and config.stores.state is None else stores.decisions,
        webhook=webhook,
        dlp=dlp,
        tools=tools,
        attested=attested,
        **telemetry(config, state),
        mcp=stores.mcp,
        console_sessions=stores.console_sessions,
        live=LiveDecisions(config.console.max_streams, config.console.stream_queue),
        connectors=ConnectorAdmin(config, registry, stores.connectors, policies),
    )
    if rt.siem is not None:
        siem = rt.siem
        rt.metrics.counters.update(
            egress_siem_events_dropped_total=("SIEM events dropped because an audit.export queue was full.", siem.dropped),
            egress_siem_export_failures_total=("SIEM events given up after retries.", siem.failed),
        )
    for name, why in rt.credentials_not_ready().items():
        log.error("connector %s is NOT READY: %s; its calls are refused and /readyz answers 503", name, why)
    rt.quotas.on_store_error = rt.metrics.quota_store_error
    if rt.policies is not None:
        rt.policies.on_reload = rt.metrics.policy_reload
    rt.metrics.gauges.update(
        egress_open_circuits=("Circuits open now, shared and per agent.", rt.breaker.open_circuits),
        egress_pending_approvals=("Approvals waiting for a person.", lambda: len(rt.approvals.list(("pending",)))),
        egress_not_ready_connectors=("Connectors in use whose credential cannot be read.",
                                     lambda: len(rt.credentials_not_ready())),
    )
    return rt


def telemetry(config: Config, state: StateDir) -> dict[str, Any]:
    """Traces, SIEM export and baselines, each only when configured; the OpenTelemetry SDK is
    imported only for traces."""
    built: dict[str, Any] = {}
    if config.telemetry.otlp_endpoint is not None:
        from gateway.telemetry.tracing import Tracing

        built["tracing"] = Tracing(config.telemetry)
    if config.audit.export:
        built["siem"] = SiemExport.build(config.audit.export, upstream_bundle(state, config.upstream_ca), _version())
    if config.anomaly is not None:
        built["baselines"] = Baselines(config.anomaly)
        built["baseline_file"] = BaselineFile(state.baselines)
    return built


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("egress-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def _pinned(config: Config, name: str) -> str | None:
    """A pin's hex digest, without its `sha256:` prefix."""
    pin = config.attest.pin.get(name)
    return pin.removeprefix("sha256:") if pin is not None else None


def audit_log(config: Config, state: StateDir, key: SigningKey, worker: int | None) -> AuditLog:
    """The single process's `audit.jsonl`, or a worker's own chain stamped with who wrote it."""
    if worker is None:
        return AuditLog(state.audit_log, key.private)
    origin: dict[str, str | int] = {"replica": config.replica, "worker": worker}
    return AuditLog(state.worker_audit_log(config.replica, worker), key.private, origin=origin)


def build_dlp(config: Config, state: StateDir, policies: PolicyStore | None) -> Dlp:
    """The DLP engine and vault; warns about entity types a policy asks for that nothing can find."""
    try:
        dlp = Dlp.build(config.dlp, state)
    except (ConfigError, ValueError) as e:  # a bad key, vault URI or recognizer: refuse to start
        raise ConfigError(f"dlp: {e}") from None
    wanted = set(config.dlp.tokenize + config.dlp.block + config.dlp.mask)
    for f in policies.current.files if policies else ():
        if f.policy.dlp is not None:
            wanted |= set(f.policy.dlp.scanned)
    missing = dlp.unsupported(frozenset(wanted))
    if missing:
        log.warning(
            "DLP cannot find %s without an NLP model (dlp.nlp_model); those values leave as they are",
            ", ".join(sorted(missing)),
        )
    return dlp
