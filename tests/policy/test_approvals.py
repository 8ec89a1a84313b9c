"""The approval store on a real SQLite file and on a real redis-server (the fleet's, `stores.state`):
round trip, reuse, expiry, changed params, races; both backends pass the same tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import Refusal
from gateway.policy.approvals import ApprovalError, ApprovalStore, request_digest
from gateway.policy.engine import PolicySet, Subject
from gateway.stores import redis_state
from tests.processes import free_port

FIN = Subject("fin-01", "finance", "acme")
POLICY = """
    version: 1
    subjects: {roles: [finance]}
    rules:
      - {connector: pay, actions: [create, refund], params: {currency: {one_of: [usd]}}, approval: "amount > 100"}
"""
PARAMS = {"amount": 500, "currency": "usd", "description": "for jane@example.com"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


REDIS_DB = 7  # a database of the session's redis-server of its own, emptied for each test


def redis_url(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue("redis")
    url = f"redis://127.0.0.1:{server.port}/{REDIS_DB}"
    redis_state.connect(url).flushdb()
    return url


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> ApprovalStore:
    if request.param == "redis":
        return redis_state.RedisApprovals(redis_state.connect(redis_url(request)), ttl=900, clock=clock)
    return ApprovalStore(tmp_path / "state" / "approvals.db", ttl=900, clock=clock)


def ask(store: ApprovalStore, ps: PolicySet, params: dict, approval_id: str | None = None,
        subject: Subject = FIN, action: str = "create") -> Refusal | str | None:
    """The pipeline's approval step without its rate charge: use the presented approval, or hold."""
    d = ps.decide(subject, "pay", action, params)
    if d.outcome != "approval_required":
        return None
    try:
        if approval_id and store.use(d, params, approval_id, "dec_test"):
            return approval_id
        return store.hold(d, params, approval_id, max_pending=1000)
    except Refusal as r:  # the store failing
        return r


def pending_id(result: Refusal | str | None) -> str:
    assert isinstance(result, Refusal) and result.code == "approval_required", result
    return str(result.details["approval_id"])


def test_round_trip_and_single_use(store: ApprovalStore, load: Callable[..., PolicySet]) -> None:
    ps = load(p=POLICY)
    first = ask(store, ps, PARAMS)
    aid = pending_id(first)
    assert pending_id(ask(store, ps, PARAMS)) == aid  # a retry while pending: same id
    assert pending_id(ask(store, ps, PARAMS, aid)) == aid  # presenting it before approval fails
    [pending] = store.list()
    assert pending.summary == {"amount": 500, "currency": "usd"}  # no free text for approvers
    assert "jane" not in pending.reason
    store.approve(aid, "alice")
    assert ask(store, ps, PARAMS, aid) == aid
    assert store.get(aid).state == "used"  # type: ignore[union-attr]
    again = ask(store, ps, PARAMS, aid)
    assert pending_id(again) != aid and "not valid for this call" in again.message  # type: ignore[union-attr]


def test_approval_only_matches_the_exact_call(store: ApprovalStore, load: Callable[..., PolicySet]) -> None:
    ps = load(p=POLICY)
    aid = pending_id(ask(store, ps, PARAMS))
    store.approve(aid, "alice")
    assert pending_id(ask(store, ps, {**PARAMS, "amount": 501}, aid)) != aid
    assert pending_id(ask(store, ps, PARAMS, aid, action="refund")) != aid
    assert pending_id(ask(store, ps, PARAMS, aid, subject=Subject("fin-02", "finance", "acme"))) != aid
    assert ask(store, ps, PARAMS, aid) == aid  # still unused by the others


def test_expiry(store: ApprovalStore, clock: Clock, load: Callable[..., PolicySet]) -> None:
    ps = load(p=POLICY)
    stale = pending_id(ask(store, ps, PARAMS))
    clock.now += 901
    with pytest.raises(ApprovalError, match="expired"):
        store.approve(stale, "alice")
    aid = pending_id(ask(store, ps, PARAMS))
    assert aid != stale
    store.approve(aid, "alice")
    clock.now += 901
    assert pending_id(ask(store, ps, PARAMS, aid)) != aid
    assert store.get(aid).state == "expired"  # type: ignore[union-attr]


def test_denied_cannot_be_used_or_approved(store: ApprovalStore, load: Callable[..., PolicySet]) -> None:
    ps = load(p=POLICY)
    aid = pending_id(ask(store, ps, PARAMS))
    store.deny(aid, "bob")
    assert pending_id(ask(store, ps, PARAMS, aid)) != aid
    with pytest.raises(ApprovalError, match="denied"):
        store.approve(aid, "alice")
    with pytest.raises(ApprovalError, match="no approval"):
        store.approve("apr_nope", "alice")


def test_allowed_calls_need_no_approval(store: ApprovalStore, load: Callable[..., PolicySet]) -> None:
    ps = load(p=POLICY)
    assert ask(store, ps, {"amount": 5, "currency": "usd"}) is None


def test_fifty_concurrent_consumers_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "approvals.db"
    setup = ApprovalStore(path)
    digest = request_digest("acme", "fin-01", "pay", "create", PARAMS)
    aid = setup.request("acme", "fin-01", "pay", "create", digest, {}, "r").id  # type: ignore[union-attr]
    setup.approve(aid, "alice")
    stores = [ApprovalStore(path) for _ in range(50)]  # one connection each, like separate processes
    barrier = threading.Barrier(50)
    wins: list[bool] = []

    def consume(s: ApprovalStore) -> None:
        barrier.wait()
        wins.append(s.consume(aid, "acme", "fin-01", "pay", "create", digest, f"dec_{threading.get_ident()}"))

    threads = [threading.Thread(target=consume, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 49 + [True]


def test_store_failure_is_store_unavailable(tmp_path: Path, load: Callable[..., PolicySet]) -> None:
    ps = load(p=POLICY)
    store = ApprovalStore(tmp_path / "a.db")
    store._db.execute("DROP TABLE approvals")
    r = ask(store, ps, PARAMS)
    assert isinstance(r, Refusal) and r.code == "store_unavailable"


def test_fifty_replicas_consuming_one_approval_on_redis_exactly_one_wins(request: pytest.FixtureRequest) -> None:
    url = redis_url(request)
    setup = redis_state.RedisApprovals(redis_state.connect(url))
    digest = request_digest("acme", "fin-01", "pay", "create", PARAMS)
    aid = setup.request("acme", "fin-01", "pay", "create", digest, {}, "r").id  # type: ignore[union-attr]
    setup.approve(aid, "alice")
    stores = [redis_state.RedisApprovals(redis_state.connect(url)) for _ in range(50)]  # a client each, like replicas
    barrier = threading.Barrier(50)
    wins: list[bool] = []

    def consume(s: ApprovalStore) -> None:
        barrier.wait()
        wins.append(s.consume(aid, "acme", "fin-01", "pay", "create", digest, f"dec_{threading.get_ident()}"))

    threads = [threading.Thread(target=consume, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 49 + [True]
    assert setup.get(aid).state == "used"  # type: ignore[union-attr]


def test_redis_down_is_store_unavailable(load: Callable[..., PolicySet]) -> None:
    ps = load(p=POLICY)
    dead = redis_state.RedisApprovals(redis_state.connect(f"redis://127.0.0.1:{free_port()}/0"))
    r = ask(dead, ps, PARAMS)
    assert isinstance(r, Refusal) and r.code == "store_unavailable"
    with pytest.raises(redis_state.StateStoreDown):
        dead.list(("pending",))


def test_the_pending_cap_holds_across_replicas(request: pytest.FixtureRequest) -> None:
    url = redis_url(request)
    replicas = [redis_state.RedisApprovals(redis_state.connect(url)) for _ in range(2)]
    made = [replicas[i % 2].request("acme", "fin-01", "pay", "create", f"digest-{i}", {}, "r", max_pending=3) for i in range(6)]
    assert [a is not None for a in made] == [True] * 3 + [False] * 3


def test_an_approval_is_given_back_only_by_the_call_that_used_it(store: ApprovalStore, clock: Clock) -> None:
    """A call refused after it used the approval (its budget) gives it back for the agent's next
    try; no other call can, a second give-back does nothing, and it still expires on time."""
    digest = request_digest("acme", "fin-01", "pay", "create", PARAMS)
    approval = store.request("acme", "fin-01", "pay", "create", digest, {}, "r")
    assert approval is not None
    aid = approval.id
    store.approve(aid, "alice")
    assert store.consume(aid, "acme", "fin-01", "pay", "create", digest, "dec_a")
    assert store.get(aid).used_by == "dec_a"  # type: ignore[union-attr]
    assert not store.consume(aid, "acme", "fin-01", "pay", "create", digest, "dec_b")  # held by dec_a
    assert not store.release(aid, "dec_b")
    assert store.release(aid, "dec_a") and not store.release(aid, "dec_a")
    back = store.get(aid)
    assert back is not None and (back.state, back.used_at, back.used_by) == ("approved", None, None)
    assert store.consume(aid, "acme", "fin-01", "pay", "create", digest, "dec_b")
    assert store.get(aid).state == "used"  # type: ignore[union-attr]
    assert store.release(aid, "dec_b")
    clock.now += 901  # past the approval's ttl: given back or not, it expires
    assert store.get(aid).state == "expired"  # type: ignore[union-attr]
    assert not store.consume(aid, "acme", "fin-01", "pay", "create", digest, "dec_c")


def test_a_released_approval_is_never_twice_usable_under_concurrency(tmp_path: Path) -> None:
    """Twenty calls race for one approval, each winner giving it back: while a call holds it, every
    other consume (racing, or a deliberate second try) fails, so it is never used twice at once."""
    path = tmp_path / "approvals.db"
    setup = ApprovalStore(path)
    digest = request_digest("acme", "fin-01", "pay", "create", PARAMS)
    approval = setup.request("acme", "fin-01", "pay", "create", digest, {}, "r")
    assert approval is not None
    setup.approve(approval.id, "alice")
    stores = [ApprovalStore(path) for _ in range(20)]
    barrier = threading.Barrier(20)
    wins: list[int] = []
    second_tries: list[bool] = []

    def call(i: int, s: ApprovalStore) -> None:
        barrier.wait()
        for _ in range(5):
            if s.consume(approval.id, "acme", "fin-01", "pay", "create", digest, f"dec_{i}"):
                wins.append(i)
                second_tries.append(s.consume(approval.id, "acme", "fin-01", "pay", "create", digest, f"dec_{i}_again"))
                assert s.release(approval.id, f"dec_{i}")

    threads = [threading.Thread(target=call, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) >= 1 and second_tries == [False] * len(wins)
    assert setup.get(approval.id).state == "approved"  # type: ignore[union-attr]
