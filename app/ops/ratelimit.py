"""Token buckets per client: in Redis when several API processes must share them, else in this process.

A bucket holds up to `burst` tokens and refills at `per_minute / 60` tokens a second; each request takes
one. A Redis round trip costs more than the rest of the middleware together, so a process takes a small
lease of tokens at once (at most a tenth of a second's refill or a twentieth of the burst, never more
than MAX_LEASE) and spends it locally for up to LEASE_SECONDS; unspent tokens lapse, so the limit is
never exceeded, only approached slightly early by many processes. When Redis stops answering, the
process falls back to its own buckets for a while rather than refusing traffic or stalling on timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("lethe.ratelimit")

REDIS_KEY_PREFIX = "lethe:ratelimit:"
REDIS_TIMEOUT_SECONDS = 0.25
# After a Redis error, buckets stay in process this long before Redis is tried again.
REDIS_RETRY_SECONDS = 5.0
# Idle buckets are full and lapsed leases are empty; past this many keys they are dropped.
MAX_LOCAL_KEYS = 100_000
MAX_LEASE = 50
LEASE_SECONDS = 1.0

# Atomically take up to ARGV[3] tokens; the clock is Redis's own so API hosts need no clock agreement.
# Returns {tokens granted, seconds to wait for one as a string (Lua numbers become integers)}.
_TAKE_TOKENS_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local granted = math.min(want, math.floor(tokens))
local wait = 0
if granted >= 1 then tokens = tokens - granted else granted = 0; wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, tostring(wait)}
"""


class MemoryTokenBuckets:
    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(burst, 1))
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Take a token for `key`: 0.0 when granted, else the seconds until one is available."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        if len(self._buckets) >= MAX_LOCAL_KEYS and key not in self._buckets:
            self._drop_full_buckets(now)
        self._buckets[key] = (tokens, now)
        return wait

    def _drop_full_buckets(self, now: float) -> None:
        refill_seconds = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill_seconds}


class RateLimiter:
    """`await limiter.take(key)`; Redis-backed when configured, with the in-process buckets as fallback."""

    def __init__(self, per_minute: int, burst: int, redis_url: str | None) -> None:
        self.enabled = per_minute > 0
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.burst = max(burst, 1)
        self.lease_size = max(1, min(MAX_LEASE, self.burst // 20, int(self.rate / 10)))
        self.memory = MemoryTokenBuckets(per_minute, burst) if self.enabled else None
        self.redis_url = redis_url
        self._leases: dict[str, tuple[int, float]] = {}  # key -> (tokens left, lapses at)
        self._redis_paused_until = 0.0
        # redis.asyncio connections belong to the event loop that opened them (test clients run several).
        self._scripts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    async def take(self, key: str) -> float:
        """Take a token for `key`: 0.0 when granted, else the seconds until one is available."""
        assert self.memory is not None, "take() on a disabled limiter"
        now = time.monotonic()
        if self.redis_url is None or now < self._redis_paused_until:
            return self.memory.take(key)
        left, lapses_at = self._leases.get(key, (0, 0.0))
        if left > 0 and now < lapses_at:
            self._leases[key] = (left - 1, lapses_at)
            return 0.0
        try:
            granted, wait = await self._script()(
                keys=[REDIS_KEY_PREFIX + key], args=[self.rate, self.burst, self.lease_size]
            )
        except Exception as exc:  # Redis down or slow: keep serving with this process's buckets
            self._redis_paused_until = time.monotonic() + REDIS_RETRY_SECONDS
            log.warning("rate-limit store unavailable, using in-process buckets: %s", type(exc).__name__)
            return self.memory.take(key)
        if int(granted) < 1:
            return float(wait)
        self._keep_lease(key, int(granted) - 1, now)
        return 0.0

    def _keep_lease(self, key: str, tokens: int, now: float) -> None:
        if tokens <= 0:
            return
        if len(self._leases) >= MAX_LOCAL_KEYS and key not in self._leases:
            self._leases = {k: v for k, v in self._leases.items() if v[0] > 0 and v[1] > now}
        # Requests of one key may lease concurrently: add up rather than drop tokens already taken.
        left, _ = self._leases.get(key, (0, 0.0))
        self._leases[key] = (left + tokens, now + LEASE_SECONDS)

    def _script(self) -> Any:
        loop = asyncio.get_running_loop()
        script = self._scripts.get(loop)
        if script is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(
                self.redis_url,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
            )
            script = client.register_script(_TAKE_TOKENS_LUA)
            self._scripts[loop] = script
        return script


def build_rate_limiter(per_minute: int, burst: int, store: str, broker_url: str) -> RateLimiter:
    is_redis_broker = urlsplit(broker_url).scheme in ("redis", "rediss")
    if store == "redis" and not is_redis_broker:
        raise ValueError("LETHE_RATE_LIMIT_STORE=redis needs a redis:// LETHE_BROKER_URL")
    use_redis = store == "redis" or (store == "auto" and is_redis_broker)
    return RateLimiter(per_minute, burst, broker_url if use_redis else None)
