"""Behaviour baselines: what each agent normally does, learned while it is observed, then each of
its calls scored against it (`anomaly:` in gateway.yaml).

An agent (its sub, or its role with `anomaly.key: role`, within its tenant) is observed for
`observe_for` from its first call: the connectors, actions, hosts and parameter shapes (the set of
top-level parameter names) it uses become its baseline, and its call rate over that period its
baseline rate. After that every call is scored by the `anomaly` step of the pipeline:

    new_connector        a connector it never used
    new_action_or_host   an action, host or parameter shape it never used (a new connector is one too)
    rate_above_baseline  its rate over the last `window` divided by its baseline rate
    deny_ratio_above     the share of its calls refused over the last `window` (at least `min_calls`)
    off_hours            outside `working_hours` (UTC)

Memory is bounded per agent (`max_items` of each kind; once full, anything else is new; one counter
per second of `window`) and in total (`max_agents`, least recently seen forgotten first), so an agent
inventing hosts or actions cannot grow it. Reset forgets an agent's baseline (it is observed
again); ratify accepts what it has done since as normal (new items learned, the rate raised to the
current one). `BaselineFile` mirrors the baselines into the state dir for `baseline show` and
carries the CLI's reset and ratify requests to the running gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import AnomalySettings

log = logging.getLogger(__name__)
KINDS = ("connectors", "actions", "hosts", "shapes")


def agent_key(tenant: str | None, sub: str, role: str, by: str) -> str:
    """Whose baseline a call belongs to: `tenant/sub`, or `tenant/@role` with `key: role`."""
    return f"{tenant or ''}/{'@' + role if by == 'role' else sub}"


def shape_of(connector: str, action: str, params: dict[str, Any]) -> str:
    """A parameter shape: the action and its sorted top-level parameter names, hashed (names can be
    agent-chosen for a model that allows extra fields, so they are never kept as text)."""
    names = "\0".join(sorted(str(k) for k in params))
    return f"{connector}:{action}:" + hashlib.sha256(names.encode()).hexdigest()[:12]


@dataclass
class Profile:
    key: str
    started: float
    observing_until: float
    known: dict[str, dict[str, int]] = field(default_factory=lambda: {k: {} for k in KINDS})
    observed_calls: int = 0  # allowed-so-far calls scored while observing
    rate: float | None = None  # baseline calls per second, set when observation ends
    novel: dict[str, float] = field(default_factory=dict)  # "kind:item" first seen after observation
    recent: deque[list[int]] = field(default_factory=deque)  # [second, calls, denies], one per second
    last_seen: float = 0.0
    signals: dict[str, float] = field(default_factory=dict)  # of the last scored call
    dirty: bool = True

    def public(self, now: float) -> dict[str, Any]:
        return {
            "agent": self.key,
            "observing": now < self.observing_until,
            "started": round(self.started, 3),
            "observing_until": round(self.observing_until, 3),
            "baseline_rate_per_minute": None if self.rate is None else round(self.rate * 60, 3),
            "connectors": sorted(self.known["connectors"]),
            "actions": sorted(self.known["actions"]),
            "hosts": sorted(self.known["hosts"]),
            "shapes": len(self.known["shapes"]),
            "novel": sorted(self.novel),
            "last_seen": round(self.last_seen, 3),
            "anomaly_score": len(self.signals),
            "signals": dict(self.signals),
        }


class Baselines:
    def __init__(self, settings: AnomalySettings) -> None:
        self.settings = settings
        self._agents: OrderedDict[str, Profile] = OrderedDict()
        self._forgotten: set[str] = set()  # since the last `take_changes`

    def _profile(self, key: str, now: float) -> Profile:
        found = self._agents.get(key)
        if found is None:
            found = self._agents[key] = Profile(key, now, now + self.settings.observe_for)
            while len(self._agents) > self.settings.max_agents:
                self._forgotten.add(self._agents.popitem(last=False)[0])
        self._agents.move_to_end(key)
        found.last_seen = now
        return found

    def count(self, key: str, denied: bool, now: float | None = None) -> None:
        """One decision of the agent (from its audit record): the rate and deny ratio's counters."""
        now = time.time() if now is None else now
        p = self._profile(key, now)
        second, window = int(now), int(self.settings.window) + 1
        if p.recent and p.recent[-1][0] == second:
            p.recent[-1][1] += 1
            p.recent[-1][2] += denied
        else:
            p.recent.append([second, 1, int(denied)])
        while p.recent and p.recent[0][0] <= second - window:
            p.recent.popleft()

    def score(self, key: str, items: dict[str, str], now: float | None = None) -> dict[str, float]:
        """The signals of one call (`items`: kind -> item) against the agent's baseline; while it is
        observed, the call is learned instead and has none."""
        now = time.time() if now is None else now
        p = self._profile(key, now)
        p.dirty = True
        cap = self.settings.max_items
        if now < p.observing_until:
            p.observed_calls += 1
            for kind, item in items.items():
                known = p.known[kind]
                if item in known or len(known) < cap:
                    known[item] = known.get(item, 0) + 1
            p.signals = {}
            return p.signals
        if p.rate is None:
            p.rate = max(p.observed_calls, 1) / self.settings.observe_for
        signals: dict[str, float] = {}
        new = [f"{kind}:{item}" for kind, item in items.items() if item not in p.known[kind]]
        if new:
            signals["new_action_or_host"] = float(len(new))
            if "connectors" in items and items["connectors"] not in p.known["connectors"]:
                signals["new_connector"] = 1.0
            for name in new:
                if name in p.novel or len(p.novel) < cap:
                    p.novel[name] = p.novel.get(name, now)
        calls, denies = self._window(p, now)
        signals["rate_above_baseline"] = round((calls + 1) / self.settings.window / p.rate, 3)
        if calls >= self.settings.min_calls:
            signals["deny_ratio_above"] = round(denies / calls, 3)
        if self._off_hours(now):
            signals["off_hours"] = 1.0
        p.signals = {name: value for name, value in signals.items() if self._unusual(name, value)}
        return signals

    def _unusual(self, name: str, value: float) -> bool:
        """Whether a signal is worth showing (`GET /v1/agents`): a rate at least double its baseline,
        a deny ratio of at least half; the rules' own thresholds decide responses."""
        return value >= {"rate_above_baseline": 2.0, "deny_ratio_above": 0.5}.get(name, 0.0) and value > 0

    def _window(self, p: Profile, now: float) -> tuple[int, int]:
        since = int(now) - int(self.settings.window)
        return sum(c for s, c, _ in p.recent if s > since), sum(d for s, _, d in p.recent if s > since)

    def _off_hours(self, now: float) -> bool:
        hours = self.settings.working_hours
        if hours is None:
            return False
        start, end = (int(h) * 60 + int(m) for h, m in (part.split(":") for part in hours.split("-")))
        minute = int(now % 86400) // 60
        inside = start <= minute < end if start <= end else (minute >= start or minute < end)
        return not inside

    def get(self, key: str) -> Profile | None:
        return self._agents.get(key)

    def agents(self, since: float) -> list[Profile]:
        return [p for p in self._agents.values() if p.last_seen >= since]

    def reset(self, key: str) -> bool:
        self._forgotten.add(key)
        return self._agents.pop(key, None) is not None

    def ratify(self, key: str, now: float | None = None) -> bool:
        """Accept what the agent did since its baseline as normal: its new items and its rate."""
        now = time.time() if now is None else now
        p = self._agents.get(key)
        if p is None:
            return False
        for name in p.novel:
            kind, _, item = name.partition(":")
            if len(p.known[kind]) < self.settings.max_items:
                p.known[kind][item] = 1
        calls, _ = self._window(p, now)
        current = calls / self.settings.window
        p.rate = max(p.rate or 0.0, current, max(p.observed_calls, 1) / self.settings.observe_for)
        p.observing_until = min(p.observing_until, now)
        p.novel, p.signals, p.dirty = {}, {}, True
        return True

    def take_changes(self, now: float) -> tuple[list[dict[str, Any]], list[str]]:
        """(profiles changed, agents forgotten) since the last call: what `BaselineFile.save` writes."""
        changed = [p.public(now) for p in self._agents.values() if p.dirty]
        for p in self._agents.values():
            p.dirty = False
        forgotten, self._forgotten = sorted(self._forgotten - set(self._agents)), set()
        return changed, forgotten

    def apply(self, key: str, verb: str) -> bool:
        return self.reset(key) if verb == "reset" else self.ratify(key)


async def keep_in_sync(baselines: Baselines, file: BaselineFile, on_request: Callable[[BaselineRequest], None],
                       interval: float = 1.0) -> None:
    """Mirror the baselines into the state dir and apply the CLI's requests, every `interval`
    (`on_request` is told of those this process claimed, to audit them); a store error is logged
    and retried, never fatal."""
    while True:
        await asyncio.sleep(interval)
        try:
            for request in await asyncio.to_thread(file.take_requests):
                log.info("baseline of %s: %s (from the command line)", request.agent, request.verb)
                baselines.apply(request.agent, request.verb)
                if request.mine:
                    on_request(request)
            changed, forgotten = baselines.take_changes(time.time())
            if changed or forgotten:
                await asyncio.to_thread(file.save, changed, forgotten)
        except sqlite3.Error as e:
            log.warning("cannot sync baselines with the state dir: %s", e)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS baselines (agent TEXT PRIMARY KEY, profile TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS baseline_requests (id INTEGER PRIMARY KEY AUTOINCREMENT, agent TEXT NOT NULL,"
    " verb TEXT NOT NULL CHECK (verb IN ('reset', 'ratify')), at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS baseline_request_audits (id INTEGER PRIMARY KEY)",
)


@dataclass(frozen=True)
class BaselineRequest:
    """A reset or ratify the CLI asked for; `mine`: this process claimed it for the audit log and
    the SIEM (every gateway process on the state dir applies it, one records it)."""

    id: int
    agent: str
    verb: str
    at: float
    mine: bool


class BaselineFile:
    """The baselines as the CLI sees them (SQLite in the state dir), and its requests to the gateway."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: int | None = None
        with self._connect() as db:
            for statement in _SCHEMA:
                db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=5)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def save(self, profiles: list[dict[str, Any]], forgotten: list[str]) -> None:
        now = time.time()
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO baselines (agent, profile, at) VALUES (?, ?, ?)",
                [(p["agent"], json.dumps(p), now) for p in profiles],
            )
            db.executemany("DELETE FROM baselines WHERE agent=?", [(k,) for k in forgotten])

    def load(self, key: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT profile FROM baselines WHERE agent=?", (key,)).fetchone()
        if row is None:
            return None
        profile: dict[str, Any] = json.loads(row[0])
        profile["observing"] = time.time() < profile["observing_until"]  # as of now, not of the last save
        return profile

    def request(self, key: str, verb: str) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO baseline_requests (agent, verb, at) VALUES (?, ?, ?)", (key, verb, time.time()))

    def take_requests(self) -> list[BaselineRequest]:
        """Requests made since the last call (none at the first: those were for an earlier run),
        each claimed for the audit if no other process has yet."""
        with self._connect() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM baseline_requests").fetchone()
            seen, self._seen = self._seen, last
            if seen is None or last == seen:
                return []
            rows = db.execute("SELECT id, agent, verb, at FROM baseline_requests WHERE id > ? ORDER BY id", (seen,)).fetchall()
            claim = "INSERT OR IGNORE INTO baseline_request_audits (id) VALUES (?)"
            return [BaselineRequest(i, agent, verb, at, db.execute(claim, (i,)).rowcount == 1) for i, agent, verb, at in rows]
