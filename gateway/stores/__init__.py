"""Where the gateway's mutable state lives: one seam, two backends, chosen by `stores.state`.

Without `stores.state` (or with `sqlite://`, no path) every store is what it always was: SQLite files in
the state dir (`revocations.sqlite`, `approvals.sqlite`, `mcp.sqlite`, `connectors.sqlite`,
`console.sqlite`), an in-memory decisions feed, and registered tools in the state dir alone
(`LocalShelf`), for one gateway process, the workers of `run --workers N` on one host, and the CLI
beside them. With `stores.state: redis://host:port/db` every store lives in that Redis instead, and
any number of replicas (or workers) started with the same config and the same keys
(`gateway.identity.keys`) form one gateway.

The seam is `open_state(config, state)`: it reads the URI once and returns `StateStores`, one
object per store, each with the same interface in both backends. The SQLite classes stay where
their logic lives (`gateway.identity.revocation.Revocations`, `gateway.policy.approvals.ApprovalStore`);
a Redis class subclasses each and replaces only its storage primitives, so the policy logic above
them (expiry, single use, pending caps, what an agent is told) is written once. To port another
store: keep its SQLite class, write `Redis<Store>` in `gateway.stores.redis_state` over the shared
`client` (atomic read-modify-writes as one Lua script, keys under `PREFIX`), add a field to
`StateStores` and a line to each branch of `open_state`. A store that must change with revocations
(quarantine) publishes on the revocations channel too. Ported so:
- MCP pins and session bindings (`gateway.mcp.store.McpStore`, `RedisMcpStore`): every statement
  of the SQLite store is one script (seed, observe, accept, bind), read on every call, so an accept
  on one replica is the pin on all at once and two replicas observing one tool pin one definition;
- registered connectors (`gateway.connector_store.ConnectorStore`, `RedisConnectorStore`): the
  documents, and a version every add and delete bumps (SQLite's `data_version` in the state dir),
  which every process polls to apply the others' changes to its own registry
  (`gateway.connector_admin.ConnectorAdmin.watch`);
- console sessions (`gateway.stores.sessions.SessionStore`, `RedisSessionStore`): the logic stays in
  `gateway.api.sessions.Sessions`; the store keeps each session under its id's hash and applies
  the bounds (`sessions_per_admin`, `max_sessions`) in one transaction or script.
A store the request path reads that is down raises `StoreUnavailable`, which `decide` refuses as
`store_unavailable` (the API answers the same), never `internal_error`.

Shared failure rules of the Redis backend (each store applies them to its own calls):
- the client never retries a command by itself (a retried script could apply twice); a Redis error
  raises `StateStoreDown` (a `StoreUnavailable`), which the pipeline refuses as `store_unavailable`
  (503) and the API answers the same way; the next call reconnects, so service resumes without a
  restart when Redis is back;
- Redis must persist (`appendonly yes`): a Redis restarted empty forgets revocations and approvals.
  Revocations that shrink are logged as an error.
- one Redis (or a primary with replicas), not Cluster: scripts build keys from what they read.

Registered tools are shared through a shelf (`gateway.stores.tools`): each replica still compiles
and keeps its own copy, taken from the shelf on first use.

What is not shared, on purpose: circuit breakers (`gateway.pipeline.breaker`). A breaker records
what this replica saw of a vendor over its own network path; one replica's broken route must not
open the circuit for the whole fleet, and N replicas probing a recovering vendor is N probes per
`breaker.reset`, a bound. An agent's own circuit is per replica too: it throttles that agent,
which a load balancer spreads over replicas, so it trips later but still trips.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import Config
from gateway.connector_store import ConnectorStore
from gateway.errors import ConfigError
from gateway.identity.quarantine import Quarantines
from gateway.identity.revocation import Revocations, kept_for
from gateway.mcp.store import McpStore, config_pins
from gateway.policy.approvals import Approval, ApprovalStore
from gateway.state import StateDir
from gateway.stores.feed import DecisionFeed, MemoryFeed
from gateway.stores.sessions import SessionStore
from gateway.stores.tools import LocalShelf, ToolShelf


@dataclass(frozen=True)
class StateStores:
    revocations: Revocations
    quarantine: Quarantines
    approvals: ApprovalStore
    decisions: DecisionFeed
    tools: ToolShelf
    mcp: McpStore
    connectors: ConnectorStore
    console_sessions: SessionStore


def backend(config: Config) -> str:
    """`sqlite` or `redis`, from `stores.state`; anything else is a config error."""
    uri = config.stores.state
    if uri is None or uri == "sqlite://":
        return "sqlite"
    if uri.startswith("sqlite:"):  # a path here would be silently ignored: the state dir holds it
        raise ConfigError("stores.state: sqlite:// keeps state in the state dir (set state_dir to move it), no path")
    if uri.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    raise ConfigError(f"stores.state: expected redis://HOST:PORT/DB or sqlite://, got scheme {uri.partition('://')[0]!r}")


def open_state(config: Config, state: StateDir, on_new_approval: Callable[[Approval], None] | None = None,
               worker: int | None = None) -> StateStores:
    """The stores of `config`; `worker` is the calling process's index under `run --workers N`
    (it names the process in the decisions feed it shares)."""
    if backend(config) == "sqlite":
        return StateStores(
            revocations=Revocations(state.revocations, kept_for(config)),
            quarantine=Quarantines(state.revocations),
            approvals=ApprovalStore(state.approvals, ttl=config.approval_ttl, on_new=on_new_approval),
            decisions=MemoryFeed(),
            tools=LocalShelf(),
            mcp=McpStore(state.mcp, config_pins(config)),
            connectors=ConnectorStore(state.connectors),
            console_sessions=SessionStore(state.console_sessions),
        )
    from gateway.stores import redis_state

    assert config.stores.state is not None
    client = redis_state.connect(config.stores.state)
    return StateStores(
        revocations=redis_state.RedisRevocations(client, config.stores.state, kept_for(config)),
        quarantine=redis_state.RedisQuarantines(client),
        approvals=redis_state.RedisApprovals(client, ttl=config.approval_ttl, on_new=on_new_approval),
        decisions=redis_state.RedisFeed(client, config.stores.state, config.replica, worker),
        tools=redis_state.RedisToolShelf(client),
        mcp=redis_state.RedisMcpStore(client, config_pins(config)),
        connectors=redis_state.RedisConnectorStore(client),
        console_sessions=redis_state.RedisSessionStore(client),
    )


def read_connectors(config: Config) -> ConnectorStore | None:
    """The registered connectors' store for a command that only lists them (`connectors`,
    `sandbox run`): the fleet's on Redis, else the state dir's file if there is one (a listing
    never creates a state dir). The caller closes it."""
    if backend(config) == "redis":
        from gateway.stores import redis_state

        assert config.stores.state is not None
        return redis_state.RedisConnectorStore(redis_state.connect(config.stores.state))
    path = StateDir(config.state_path).connectors
    return ConnectorStore(path) if path.exists() else None
