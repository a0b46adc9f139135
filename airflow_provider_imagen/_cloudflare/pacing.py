"""
Pace requests per Cloudflare account and model, shared in one process.

Every hook, trigger and batch prompt that calls the same model of an account takes its turn from one :class:`Pacer`, so
that a rate limit is learned once and kept by all.

How it paces:

- **A known limit** (``requests_per_minute``): sends are spaced evenly at that rate, never faster, so the
  account's limit is not exceeded in the first place.
- **Cold start**: until the first rejection, a new pacer lets 16 sends out at once and then doubles that
  allowance every 50 ms. Without a limit it is out of the way within a fraction of a second; against a limit,
  the first rejection comes back while only a few sends too many are on the wire.
- **Learned from the answers**: a rejection (429, capacity, wholesale throttling) means the account's bucket is
  empty, so the requests accepted since the previous rejection are what it refilled in that time (or less, if
  it overflowed meanwhile). The pacer sets its rate a little below that, and raises it while requests that
  waited for their turn succeed: by 10 % a second back up to the measured limit, by 2 % a second beyond it,
  until the next rejection measures the limit again. A ``Retry-After`` holds every send until it has passed.
  A first rejection, with no measurement yet, sets a guess: what got through in the last second, spread over
  that second and the pause asked for; refusals of that burst coming back later lower it, and the pace climbs
  25 % a second from it until a rejection measures the limit.

Across worker processes, use an Airflow pool sized to the account's limit (see the docs' *Rate limits* page).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from airflow_provider_imagen._cloudflare.retry import is_rate_limited
from airflow_provider_imagen._cloudflare.rules import returns_bytes

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from airflow_provider_imagen._cloudflare.settings import ConnectionSettings

#: Sends a cold pacer lets out at once.
RAMP_START = 16
#: Seconds in which a cold pacer's allowance doubles.
RAMP_DOUBLING = 0.05
#: Seconds after its first send at which a pacer that met no rejection stops ramping (16 x 2**8 sends).
RAMP_SECONDS = RAMP_DOUBLING * 8
#: The share of the measured rate a pacer settles at after a rejection: a little below, to refill the bucket.
SETTLE = 0.9
#: The share of its pace a pacer keeps after a rejection, at least (a measurement may say more).
BACKOFF = 0.7
#: Requests a second added per successful send that waited its turn: 2 % of the rate per second, at any rate.
GROWTH = 0.02
#: The same below the ceiling (the limit as last measured): 10 % a second, back within seconds.
FAST_GROWTH = 0.1
#: The same while the pace is only a first guess: 25 % a second, to find the limit soon.
GUESS_GROWTH = 0.25
#: Accepted sends a measurement needs; with fewer, the rate is halved instead.
MIN_SAMPLES = 4
#: The slowest pace: one request a minute.
MIN_RATE = 1 / 60
#: Seconds of a rejection's assumed pause when it carries no ``Retry-After`` (for the first estimate only).
ASSUMED_PAUSE = 1.0
#: Seconds ahead a caller may hold a slot. Callers further back re-ask every :data:`NAP` seconds instead, so
#: that a pace that climbs (or a known limit raised) reaches them, not only the slots handed out before.
HORIZON = 1.0
NAP = 0.5
#: The longest pause a ``Retry-After`` imposes on every send of the process (a per-minute limit clears within
#: a minute); the refused call itself gives up at once on a longer one (``max_retry_wait``).
MAX_PAUSE = 60.0


class Turn:
    """One send's turn: enter it to send, and leave it with the answer (or the exception) to report it."""

    __slots__ = ("_pacer", "epoch", "waited")

    def __init__(self, pacer: Pacer, epoch: int, waited: bool) -> None:
        self._pacer, self.epoch, self.waited = pacer, epoch, waited

    def __enter__(self) -> Turn:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self._pacer.accepted(self)
        elif is_rate_limited(exc):
            self._pacer.rejected(self, getattr(exc, "retry_after", None))


class Pacer:
    """
    The pace of one account's requests, shared by every event loop and thread of the process.

    State changes under a lock and take microseconds; a caller waits for its turn outside the lock (with
    ``asyncio.sleep`` or ``time.sleep``), so no event loop ever blocks another.

    :param requests_per_minute: the account's known limit; ``None`` to learn it from rejections.
    :param clock: seconds on a monotonic clock (tests inject their own).
    """

    def __init__(self, requests_per_minute: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._limit: float | None = None  # requests a second, never exceeded
        self._rate: float | None = None  # the current pace; None: unpaced
        self._next = -math.inf  # when the next paced send may go
        self._paused_until = -math.inf
        self._ramp_start: float | None = None
        self._ramp_sends = 0
        self._ramping = True
        self._ceiling = math.inf  # the limit as last measured; the pace climbs fast below it, slowly above
        self._epoch = 0  # bumped by every rejection that changes the pace
        self._epoch_start: float | None = None
        self._accepted = 0  # sends of this epoch not (yet) rejected
        self._waited = 0  # of those, how many waited for their turn: the pace, not the caller, was the limit
        self._recent: deque[float] = deque(maxlen=4096)  # send times, for the first estimate
        # While the pace is a first guess: what the unpaced burst had accepted, and over how long to spread it.
        self._burst_accepted = 0
        self._guess_span: float | None = None
        self.sent = 0
        self.rejections = 0
        self.set_limit(requests_per_minute)

    @property
    def rate(self) -> float | None:
        """Requests a second the pacer lets out; ``None`` while it does not pace."""
        return self._rate

    def set_limit(self, requests_per_minute: float | None) -> None:
        """Never exceed ``requests_per_minute`` from now on (``None``: no known limit, learn it)."""
        with self._lock:
            limit = None if requests_per_minute is None else requests_per_minute / 60
            if limit == self._limit:
                return
            self._limit = limit
            if limit is not None:
                self._ramping = False
                self._rate = limit if self._rate is None else min(self._rate, limit)

    async def turn(self) -> Turn:
        """Wait, without blocking the event loop, until this send may go."""
        epoch = None
        while True:
            delay, epoch, turn = self.take(epoch)
            if turn is not None:
                return turn
            await asyncio.sleep(delay)

    def wait_turn(self) -> Turn:
        """Do the same as :meth:`turn`, for synchronous code."""
        epoch = None
        while True:
            delay, epoch, turn = self.take(epoch)
            if turn is not None:
                return turn
            time.sleep(delay)

    def take(self, reserved: int | None) -> tuple[float, int, Turn | None]:
        """
        Take a turn now, or return the seconds to wait for the slot reserved.

        A caller that waited for a slot takes it if no rejection changed the pace meanwhile; otherwise it
        reserves a slot at the new pace.
        """
        with self._lock:
            now = self._clock()
            if reserved == self._epoch and now >= self._paused_until:
                return 0.0, reserved, self._start(now, waited=True)
            at = self._slot(now)
            if at is None:  # further back than the horizon: ask again later, holding no slot
                return min(max(self._next - now - HORIZON, 0.01), NAP), -1, None
            if at <= now:
                return 0.0, self._epoch, self._start(now, waited=reserved is not None)
            return at - now, self._epoch, None

    def _slot(self, now: float) -> float | None:
        start = max(now, self._paused_until)
        if self._rate is not None:
            at = max(start, self._next)
            if at - now > HORIZON:
                return None
            self._next = at + 1 / self._rate
            return at
        if self._ramping:
            if self._ramp_start is None:
                self._ramp_start = now
            if now >= self._ramp_start + RAMP_SECONDS:
                self._ramping = False
            else:
                self._ramp_sends += 1
                over = self._ramp_sends / RAMP_START
                return max(start, self._ramp_start + RAMP_DOUBLING * math.log2(over)) if over > 1 else start
        return start

    def _start(self, now: float, waited: bool) -> Turn:
        if self._epoch_start is None:
            self._epoch_start = now
        self.sent += 1
        self._accepted += 1
        self._waited += waited
        self._recent.append(now)
        return Turn(self, self._epoch, waited)

    def accepted(self, turn: Turn) -> None:
        """Note that a send of ``turn`` was answered without a rejection: while the pace is the limit, raise it."""
        if turn.waited and self._rate is not None:
            with self._lock:
                if self._rate is not None:
                    if self._guess_span is not None:
                        growth = GUESS_GROWTH
                    else:
                        growth = FAST_GROWTH if self._rate < self._ceiling else GROWTH
                    self._rate = min(self._rate + growth, self._limit or math.inf)

    def rejected(self, turn: Turn, retry_after: float | None) -> None:
        """Note a send of ``turn`` refused by a rate limit: measure the limit, slow down, honour ``Retry-After``."""
        with self._lock:
            now = self._clock()
            self.rejections += 1
            if retry_after:
                self._paused_until = max(self._paused_until, now + min(retry_after, MAX_PAUSE))
            if turn.epoch != self._epoch:
                # Sent before the last slow-down: part of the rejection already counted. But a refusal of the
                # unpaced burst, coming back late (a busy machine, a long way), shows the first guess too high.
                if turn.epoch == 0 and self._guess_span is not None and self._rate is not None:
                    self._burst_accepted -= 1
                    guess = max(self._burst_accepted / self._guess_span, MIN_RATE)
                    if guess < SETTLE * self._rate:
                        self._rate = guess
                        self._restart(now)
                return
            self._accepted -= 1
            self._waited -= turn.waited
            self._rate = self._measure(now, retry_after)
            self._ramping = False
            self._restart(now)

    def _restart(self, now: float) -> None:
        """Start a new pace from ``now``: turns reserved at the old one are taken again."""
        self._next = max(now, self._paused_until)
        self._epoch += 1
        self._epoch_start, self._accepted, self._waited = now, 0, 0

    def _measure(self, now: float, retry_after: float | None) -> float | None:
        """Return the pace after a rejection at ``now``."""
        if self._rate is None:
            # Unpaced so far: what got through in the last second was a burst, not a rate. Assume it took at
            # least the pause; the next rejection measures the rate itself.
            recent = sum(1 for t in self._recent if t >= now - 1.0) - 1
            if recent < MIN_SAMPLES:
                return None  # too little to learn from: the caller's own backoff handles it
            self._burst_accepted, self._guess_span = recent, 1.0 + (retry_after or ASSUMED_PAUSE)
            rate = recent / self._guess_span
        elif self._accepted >= MIN_SAMPLES and self._waited * 2 >= self._accepted and self._epoch_start is not None:
            # Paced, and the pace was the limit: the bucket was empty at the last rejection and is empty now,
            # so what it accepted in between is what it refilled, unless it overflowed while the pace was
            # below the limit. So the limit is at least that, and below the pace just refused.
            measured = self._accepted / max(now - self._epoch_start, 1e-3)
            self._guess_span = None  # measured: late refusals of the burst say nothing more
            self._ceiling = max(measured, BACKOFF * self._rate)
            rate = SETTLE * self._ceiling
        else:
            rate = self._rate * BACKOFF * BACKOFF
        return min(max(rate, MIN_RATE), self._limit or math.inf)


_pacers: dict[tuple[str, str, str, float | None], Pacer] = {}
_pacers_lock = threading.Lock()


def pacer_for(settings: ConnectionSettings, requests_per_minute: float | None = None, model: str = "") -> Pacer:
    """
    Return the process's pacer for ``model`` on the account ``settings`` call.

    It is held to ``requests_per_minute``, else the connection's. One per API base URL, account and limit:
    Cloudflare's own models (``@cf/``, ``@hf/``) share the account's Workers AI limit, which is per task type; each
    third-party model has its provider's. So a model found out of capacity does not slow the model that stands in
    for it. Calls with another ``requests_per_minute`` have a pacer of their own: one DAG's low limit never slows
    another's calls.
    """
    limit = requests_per_minute if requests_per_minute is not None else settings.requests_per_minute
    # The limit is part of the key: a DAG that asks for a slow pace gets it without slowing the others.
    key = (settings.base_url, settings.account_id, "workers-ai" if returns_bytes(model) else model, limit)
    with _pacers_lock:
        pacer = _pacers.get(key)
        if pacer is None:
            pacer = _pacers[key] = Pacer(limit)
    return pacer


def reset() -> None:
    """Forget every pacer (a new process starts cold: tests and benchmarks use this to start alike)."""
    with _pacers_lock:
        _pacers.clear()
