"""The vault on Redis, for several gateway replicas sharing tokens.

Keys (prefix `egw:dlp:`): `lk:<hmac>` -> token, and `tk:<token>` -> scope, type and sealed value,
both with the entry's TTL, so Redis expires entries itself. Getting or creating a token is one Lua
script: concurrent first uses of a value, from any replica, get one token. The script builds the
`tk:` key from the token it finds, so it needs one Redis (or a primary with replicas), not Cluster.
Values are sealed before they leave the process; Redis only ever holds ciphertext.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dlp.crypto import Sealer, SealError
from dlp.tokens import new_token, token_type
from dlp.vault import Entry, StoreUnavailable

PREFIX = "egw:dlp:"

# KEYS[1] lookup key; ARGV: new token, new entry, ttl ms, token key prefix.
# Returns {token, remaining ttl ms}.
_TOKEN_FOR = """
local t = redis.call('GET', KEYS[1])
if t then
  local left = redis.call('PTTL', ARGV[4] .. t)
  if left > 0 then return {t, left} end
end
redis.call('SET', ARGV[4] .. ARGV[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {ARGV[1], tonumber(ARGV[3])}
"""


class RedisVault:
    """Vault entries in Redis with native expiry."""

    def __init__(self, client: aioredis.Redis, sealer: Sealer, ttl: float) -> None:
        self._redis = client
        self._sealer = sealer
        self._ttl_ms = int(ttl * 1000)
        self._script = client.register_script(_TOKEN_FOR)

    def __repr__(self) -> str:
        return "RedisVault(...)"

    @classmethod
    def from_url(cls, url: str, sealer: Sealer, ttl: float) -> RedisVault:
        return cls(aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2), sealer, ttl)

    async def token_for(self, scope: str, entity_type: str, value: str) -> tuple[str, float]:
        lookup = PREFIX + "lk:" + self._sealer.lookup(scope, entity_type, value)
        token = new_token(entity_type)
        sealed = self._sealer.seal(value, token=token, scope=scope, entity_type=entity_type)
        entry = json.dumps({"s": scope, "t": entity_type, "v": sealed.hex()})
        try:
            found, left_ms = await self._script(keys=[lookup], args=[token, entry, self._ttl_ms, PREFIX + "tk:"])
        except RedisError as exc:
            raise StoreUnavailable(f"redis vault write failed: {type(exc).__name__}") from None
        found = found.decode("ascii") if isinstance(found, bytes) else found
        return found, time.time() + int(left_ms) / 1000

    async def resolve(self, scope: str, tokens: Collection[str]) -> dict[str, Entry]:
        unique = sorted(set(tokens))
        if not unique:
            return {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for t in unique:
                    pipe.get(PREFIX + "tk:" + t)
                    pipe.pttl(PREFIX + "tk:" + t)
                replies = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"redis vault read failed: {type(exc).__name__}") from None
        now = time.time()
        found: dict[str, Entry] = {}
        for i, token in enumerate(unique):
            raw, left_ms = replies[2 * i], replies[2 * i + 1]
            if raw is None or left_ms is None or left_ms <= 0:
                continue
            data = json.loads(raw)
            if data["s"] != scope or data["t"] != token_type(token):
                continue
            try:
                value = self._sealer.open(bytes.fromhex(data["v"]), token=token, scope=scope, entity_type=data["t"])
            except SealError:
                continue
            found[token] = Entry(data["t"], value, now + left_ms / 1000)
        return found

    async def purge_expired(self) -> int:
        """Redis expires entries itself."""
        return 0

    async def close(self) -> None:
        await self._redis.aclose()
