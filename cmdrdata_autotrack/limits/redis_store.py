"""The counters of a fleet: Redis, shared by every process of every machine.

One sync is one Lua script run: Redis runs it atomically, so the increments of
all processes add up exactly, and each counter expires when its window ends.
Timeouts are short and the client does not retry: an unreachable Redis must
cost the app no more than a moment, and the agent then lets calls through
(see :mod:`.counters`). Needs the ``redis`` package (``cmdrdata-autotrack[redis]``).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

KEY_PATTERN = "cmdrdata:limits:*"
EXPIRY_GRACE_S = 60  # a counter outlives its window a little: late syncs still add up
TIMEOUT_S = 0.5
_CHUNK = 1000

# KEYS: the counters; ARGV[1]: how many of the first KEYS get a delta, then for each of
# them the delta and the Unix time its key expires. Returns every key's total.
_SYNC = """
local n = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  if i <= n then
    out[i] = redis.call('INCRBY', KEYS[i], ARGV[2 * i])
    redis.call('EXPIREAT', KEYS[i], ARGV[2 * i + 1])
  else
    out[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
end
return out
"""


def describe(url: str) -> str:
    """``Redis host:port/db``: the URL without its credentials, for messages."""
    try:
        parts = urlsplit(url)
        where = parts.hostname or parts.path or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "Redis"
    db = parts.path if parts.hostname and parts.path not in ("", "/") else ""
    return f"Redis {where}{port}{db}"


class RedisStore:
    def __init__(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        redis: Any = importlib.import_module("redis")  # ImportError: the caller explains
        retry: Any = importlib.import_module("redis.retry")
        backoff: Any = importlib.import_module("redis.backoff")
        self.name = describe(url)
        self.client: Any = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=retry.Retry(backoff.NoBackoff(), 0),
        )
        self._script: Any = self.client.register_script(_SYNC)

    def sync(
        self, deltas: Mapping[str, int], expires: Mapping[str, float], read: Collection[str]
    ) -> dict[str, int]:
        keys = [*deltas, *read]
        if not keys:
            return {}
        args: list[int] = [len(deltas)]
        for key, delta in deltas.items():
            args += [delta, int(expires[key]) + EXPIRY_GRACE_S]
        totals = self._script(keys=keys, args=args)
        return {key: int(total) for key, total in zip(keys, totals, strict=True)}

    def scan(self, now: float) -> dict[str, int]:
        keys = [k for k in self.client.scan_iter(match=KEY_PATTERN, count=_CHUNK)]
        out: dict[str, int] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            for key, value in zip(chunk, self.client.mget(chunk), strict=True):
                if value is not None:
                    name = key.decode() if isinstance(key, bytes) else str(key)
                    out[name] = int(value)
        return out

    def after_fork(self) -> None:
        return None  # redis-py's connection pool notices the new process and reconnects

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
