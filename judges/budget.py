"""What a hosted judge may spend: requests and tokens per minute per endpoint, how many
requests are in flight, and what the server says about its own limits.

- `TokenBucket`: a rate with a burst of one second's worth. A request reserves what it needs
  and is told how long to wait; the bucket may go into debt, so a reservation never waits on
  another one (no lock held across an await, no event loop bound: the judge runs its calls on
  whatever loop the actor gives it).
- `EndpointLimits`: the requests and tokens buckets of one endpoint, shared by every judge in
  the process that calls it (`limits_for`), and the pause the server asked for: a 429's
  Retry-After, or `x-ratelimit-remaining-*: 0` with its `x-ratelimit-reset-*`.
- `SpendingLimit`: what a judge may still spend in this judge step. A request reserves the
  most it can cost (its prompt counted as one token per byte, plus max_tokens) before it is
  sent; one that does not fit is not sent, nor is any after it, until the next allowance.
- `AdaptiveSlots`: requests in flight, additive increase and multiplicative decrease: a 429
  halves the limit (once per round of requests in flight, not once per throttled request),
  each success adds 1/limit, up to the configured concurrency.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Mapping

Clock = Callable[[], float]

# How a judgment the cost cap stopped says so: the judge step recognises it by this start.
COST_CAP_ERROR = "judge cost cap reached"


class TokenBucket:
    """`rate` units per second; up to one second's worth (at least `min_burst`) may go at once."""

    def __init__(self, rate: float, clock: Clock = time.monotonic, min_burst: float = 1.0):
        self.rate, self.clock = rate, clock
        self.capacity = max(min_burst, rate)
        self.level, self.stamp = self.capacity, clock()
        self.lock = threading.Lock()

    def reserve(self, n: float) -> float:
        """Take `n` now and return the seconds to wait before using them (0: at once)."""
        with self.lock:
            self._refill()
            self.level -= n
            return max(0.0, -self.level / self.rate)

    def refund(self, n: float) -> None:
        """Give back `n` (negative: take more), when a request used less (more) than it reserved."""
        with self.lock:
            self._refill()
            self.level = min(self.capacity, self.level + n)

    def at_most(self, n: float) -> None:
        """The server says only `n` are left: never believe there are more."""
        with self.lock:
            self._refill()
            self.level = min(self.level, n)

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now


class EndpointLimits:
    """Requests and tokens per minute of one endpoint (None: no limit of ours), and until when
    the server asked us to send nothing."""

    def __init__(
        self, requests_per_minute: float | None, tokens_per_minute: float | None, clock: Clock = time.monotonic
    ):
        self.clock = clock
        self.requests = TokenBucket(requests_per_minute / 60, clock) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute / 60, clock) if tokens_per_minute else None
        self.paused_until = 0.0
        self.lock = threading.Lock()

    async def acquire(self, tokens: int) -> None:
        """Wait for a request of about `tokens` tokens to be allowed. The pause is read again
        after each wait: a 429 may arrive while this request waits for the bucket."""
        wait = max(
            self.requests.reserve(1) if self.requests else 0.0,
            self.tokens.reserve(tokens) if self.tokens else 0.0,
        )
        if wait > 0:
            await asyncio.sleep(wait)
        while (left := self.paused_until - self.clock()) > 0:
            await asyncio.sleep(left)

    def settle(self, reserved: int, used: int) -> None:
        """The reply said how many tokens the request took; correct the reservation."""
        if self.tokens is not None:
            self.tokens.refund(reserved - used)

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` (a longer pause already set stays)."""
        with self.lock:
            self.paused_until = max(self.paused_until, self.clock() + seconds)

    def observe(self, headers: Mapping[str, str] | None, max_wait_s: float) -> None:
        """Follow the server's `x-ratelimit-*` headers: what is left caps our buckets, and
        nothing left pauses every request until the reset (at most `max_wait_s`; a header is a
        hint, and a wrong one must not stop the judge for hours)."""
        if not headers:
            return
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is None:
                continue
            if bucket is not None:
                bucket.at_most(remaining)
            reset = reset_seconds(headers.get(f"x-ratelimit-reset-{kind}"), self.clock)
            if remaining <= 0 and reset:
                self.pause(min(reset, max_wait_s))


_REGISTRY: dict[tuple, EndpointLimits] = {}
_REGISTRY_LOCK = threading.Lock()


def limits_for(
    url: str, model: str, requests_per_minute: float | None, tokens_per_minute: float | None
) -> EndpointLimits:
    """The limits of (url, model), shared by every judge in this process (a judge actor's
    chunks, or two judges of a composite calling one endpoint). Judges asking for different
    limits on one endpoint get their own buckets: each keeps what it was told."""
    key = (url, model, requests_per_minute, tokens_per_minute)
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            _REGISTRY[key] = EndpointLimits(requests_per_minute, tokens_per_minute)
        return _REGISTRY[key]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def reset_seconds(value: str | None, clock: Clock = time.monotonic) -> float | None:
    """`x-ratelimit-reset-*` in the forms servers send: a Go duration ("1s", "6m0s", "20ms"),
    plain seconds ("0.5"), or a Unix time past 10^9 (as some proxies do). None: unreadable."""
    if not value:
        return None
    value = value.strip()
    number = _number(value)
    if number is not None:
        return max(0.0, number - time.time()) if number > 1e9 else max(0.0, number)
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class AdaptiveSlots:
    """At most `limit` requests in flight; the limit halves on a 429 and creeps back by 1/limit
    per success, between 1 and `ceiling`. A 429 for a request sent before the last decrease
    does not decrease again: those requests were in flight together and are one signal."""

    def __init__(self, ceiling: int, adaptive: bool = True):
        self.ceiling, self.adaptive = ceiling, adaptive
        self.limit = float(ceiling)
        self.in_flight = 0
        self.epoch = 0  # bumped at each decrease
        self._changed: asyncio.Condition | None = None

    def bind(self) -> None:
        """A fresh condition on the running loop (each judge() session may run on another)."""
        self._changed = asyncio.Condition()

    async def acquire(self) -> int:
        """Wait for a slot; returns the epoch the request started in."""
        assert self._changed is not None, "bind() first, on the loop that waits"
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1
            return self.epoch

    async def release(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def throttled(self, epoch: int) -> None:
        if self.adaptive and epoch == self.epoch:
            self.limit = max(1.0, self.limit / 2)
            self.epoch += 1

    def succeeded(self) -> None:
        if self.adaptive:
            self.limit = min(float(self.ceiling), self.limit + 1 / self.limit)


class SpendingLimit:
    """USD a judge may spend until told otherwise (None: no limit). `spent` is the judge's
    running total; what requests in flight may still cost is reserved on top of it."""

    def __init__(self) -> None:
        self.allowance: float | None = None
        self.start = self.reserved = 0.0
        self.stopped = False

    def reset(self, allowance: float | None, spent: float) -> None:
        self.allowance, self.start, self.stopped = allowance, spent, False

    def reserve(self, cost: float, spent: float) -> bool:
        """Whether a request that may cost `cost` fits; if so it is reserved until `release`."""
        if self.allowance is None:
            return True
        if self.stopped or (spent - self.start) + self.reserved + cost > self.allowance:
            self.stopped = True  # none after it either: the step stops at a clean point
            return False
        self.reserved += cost
        return True

    def release(self, cost: float) -> None:
        if self.allowance is not None:
            self.reserved = max(0.0, self.reserved - cost)

    def left(self, spent: float) -> float | None:
        return None if self.allowance is None else self.allowance - (spent - self.start)
