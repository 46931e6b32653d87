"""Per-client limits of the study server: rate limits and the cap on open sessions per address.

They live on `app.state` (one set per app, never module globals) and read an injected clock, so tests
move time instead of sleeping. Nothing here is written to study.db: the consent text promises that
only answers, times and the participant id are recorded, not addresses.

A client is its address as uvicorn reports it; behind a reverse proxy on 127.0.0.1 uvicorn takes it
from X-Forwarded-For (its `forwarded_allow_ips`). IPv6 addresses count per /64, the block one
household or server usually gets, so rotating addresses inside it does not buy more consents.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable

from fastapi import Request

_PRUNE_AT = 10_000  # clients remembered before idle ones are forgotten


def client_key(request: Request) -> str:
    """The address a limit counts against; IPv6 by its /64 network."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


class RateLimit:
    """A token bucket per client: `per_minute` requests at once, refilled at `per_minute` a minute."""

    def __init__(self, per_minute: float, clock: Callable[[], float]) -> None:
        self.capacity = max(1.0, float(math.ceil(per_minute)))
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when counted)

    def take(self, client: str) -> float:
        """0 when the request may go ahead (one token taken), else the seconds until it may."""
        now = self._clock()
        tokens, then = self._buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1, now)
        if len(self._buckets) > _PRUNE_AT:
            self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        """Drop clients whose bucket has filled up again: they are as if never seen."""
        full = [c for c, (t, then) in self._buckets.items() if t + (now - then) * self.rate >= self.capacity]
        for client in full:
            del self._buckets[client]


class OpenSessions:
    """Participants each client started whose places are still held; `is_open(participant)` asks
    the store, so finished, expired and released sessions stop counting by themselves."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._started: dict[str, set[str]] = {}

    def full(self, client: str, is_open: Callable[[str], bool]) -> bool:
        """Whether `client` already holds `limit` open sessions (closed ones are forgotten here)."""
        still = {p for p in self._started.get(client, ()) if is_open(p)}
        if still:
            self._started[client] = still
        else:
            self._started.pop(client, None)
        return len(still) >= self.limit

    def add(self, client: str, participant: str) -> None:
        self._started.setdefault(client, set()).add(participant)
