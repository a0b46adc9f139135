"""
The rate pacer: its rules on a clock the tests move (no timing in these), a whole batch against the
emulator's token bucket simulated on that clock, and the pacer shared by the process's callers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading

import pytest

from airflow_provider_imagen._cloudflare.pacing import RAMP_DOUBLING, RAMP_SECONDS, RAMP_START, Pacer, Turn, pacer_for
from airflow_provider_imagen._cloudflare.settings import ConnectionSettings
from airflow_provider_imagen.emulator.faults import TokenBucket
from airflow_provider_imagen.exceptions import CloudflareRateLimitError, CloudflareServerError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(retry_after: float | None = None) -> CloudflareRateLimitError:
    return CloudflareRateLimitError("Capacity", status_code=429, code=3040, retryable=True, retry_after=retry_after)


def send(pacer: Pacer, error: BaseException | None = None) -> None:
    """Take a turn that must be free now and report ``error`` (``None``: accepted) as the hook does."""
    delay, _, turn = pacer.take(None)
    assert turn is not None, f"expected a turn now, got a wait of {delay} s"
    if error is None:
        with turn:
            pass
        return
    with pytest.raises(type(error)), turn:
        raise error


def waited_for_turn(pacer: Pacer, clock: Clock) -> tuple[float, Turn]:
    """Seconds a caller waits for its turn (moving the clock as ``turn()`` would sleep), and the turn."""
    started, epoch = clock.now, None
    while True:
        delay, epoch, turn = pacer.take(epoch)
        if turn is not None:
            return clock.now - started, turn
        clock.now += delay


def test_a_cold_pacer_lets_a_burst_out_then_doubles_its_allowance_until_it_steps_aside():
    clock = Clock()
    pacer = Pacer(clock=clock)
    delays = [pacer.take(None)[0] for _ in range(2 * RAMP_START)]
    assert delays[:RAMP_START] == [0.0] * RAMP_START
    assert delays[RAMP_START] == pytest.approx(RAMP_DOUBLING * math.log2((RAMP_START + 1) / RAMP_START))
    assert delays[-1] == pytest.approx(RAMP_DOUBLING)  # twice the start, one doubling later
    clock.now += RAMP_SECONDS
    assert [pacer.take(None)[0] for _ in range(10_000)] == [0.0] * 10_000  # no limit met: out of the way
    assert pacer.rate is None


def test_a_known_limit_spaces_every_send_and_is_never_exceeded():
    clock = Clock()
    pacer = Pacer(requests_per_minute=600, clock=clock)
    sent: list[float] = []
    for _ in range(50):
        _, turn = waited_for_turn(pacer, clock)
        with turn:
            sent.append(clock.now)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) == pytest.approx(0.1)
    assert pacer.rate == 10.0  # successes that waited do not raise it past the known limit


def test_a_rejection_after_a_burst_sets_a_pace_and_retry_after_holds_every_send():
    clock = Clock()
    pacer = Pacer(clock=clock)
    for _ in range(RAMP_START - 1):
        send(pacer)
    send(pacer, refused(retry_after=2.0))
    assert pacer.rate == pytest.approx((RAMP_START - 1) / (1.0 + 2.0))  # what got through, over the pause
    assert waited_for_turn(pacer, clock)[0] == pytest.approx(2.0)  # Retry-After is honoured by everyone
    send_later = Pacer(clock=clock)
    send(send_later, refused(retry_after=3600.0))  # the refused call gives up; the others wait a minute at most
    assert waited_for_turn(send_later, clock)[0] == pytest.approx(60.0)


def test_late_refusals_of_the_first_burst_lower_the_first_guess():
    # A busy machine: the whole burst is on the wire before its first refusal comes back; 10 of 64 got through.
    clock = Clock()
    pacer = Pacer(clock=clock)
    clock.now += 0.001
    burst = []
    for _ in range(64):
        delay, _, turn = pacer.take(None)
        clock.now += delay
        if turn is None:
            delay, _, turn = pacer.take(0)
        burst.append(turn)
    pacer.rejected(burst[10], 1.0)
    first_guess = pacer.rate
    for turn in burst[11:]:
        pacer.rejected(turn, 1.0)
    assert pacer.rate is not None and first_guess is not None
    assert pacer.rate < first_guess
    assert pacer.rate == pytest.approx(10 / 2.0)  # what the burst really got through, over 1 s and the pause


def test_rejections_of_sends_made_before_the_slow_down_count_once():
    clock = Clock()
    pacer = Pacer(requests_per_minute=600, clock=clock)
    turns = []
    for _ in range(5):
        delay, epoch, turn = pacer.take(None)
        while turn is None:
            clock.now += delay
            delay, epoch, turn = pacer.take(epoch)
        turns.append(turn)
    pacer.rejected(turns[0], None)
    rate = pacer.rate
    for turn in turns[1:]:  # all on the wire before the first refusal came back
        pacer.rejected(turn, None)
    assert pacer.rate == rate and pacer.rejections == 5


def test_too_little_to_learn_from_leaves_the_pace_alone():
    # One call refused once (an injected fault, a busy model): no rate is learned from it.
    pacer = Pacer(clock=Clock())
    send(pacer, refused())
    assert pacer.rate is None
    send(pacer)


def test_other_failures_do_not_move_the_pace():
    pacer = Pacer(requests_per_minute=60, clock=Clock())
    _, _, turn = pacer.take(None)
    with pytest.raises(CloudflareServerError), turn:
        raise CloudflareServerError("down", status_code=503, retryable=True)
    assert (pacer.rate, pacer.rejections) == (1.0, 0)


def simulate(
    n: int = 300,
    concurrency: int = 50,
    latency: float = 0.5,
    per_minute: float = 600,
    burst: float = 20,
    round_trip: float = 0.005,
    requests_per_minute: float | None = None,
) -> dict[str, float]:
    """
    ``n`` generations, ``concurrency`` at a time, against the emulator's token bucket, on a simulated clock:
    a refusal comes back after ``round_trip`` with a whole-second ``Retry-After`` and is re-sent after it, as
    the hook does; an accepted request answers after ``latency``.
    """
    clock = Clock()
    start = clock.now
    pacer = Pacer(requests_per_minute, clock=clock)
    bucket = TokenBucket(per_minute, burst, clock=clock)
    order = itertools.count()
    events: list[tuple[float, int, tuple]] = []
    left, done, rejected, reserved = n, 0, 0, {}

    def at(when: float, *event: object) -> None:
        heapq.heappush(events, (when, next(order), event))

    for caller in range(min(concurrency, n)):
        left -= 1
        at(clock.now, "want", caller)
    while events:
        clock.now, _, event = heapq.heappop(events)
        kind, caller, *rest = event
        if kind == "want":
            delay, epoch, turn = pacer.take(reserved.pop(caller, None))
            if turn is None:
                reserved[caller] = epoch
                at(clock.now + delay, "want", caller)
                continue
            wait = bucket.take()
            if wait is None:
                at(clock.now + latency, "accepted", caller, turn)
            else:
                at(clock.now + round_trip, "refused", caller, turn, max(1, math.ceil(wait)))
        elif kind == "accepted":
            pacer.accepted(rest[0])
            done += 1
            if left:
                left -= 1
                at(clock.now, "want", caller)
        else:
            pacer.rejected(rest[0], rest[1])
            rejected += 1
            at(clock.now + rest[1], "want", caller)
    ideal = (n - burst) / (per_minute / 60)
    return {"done": done, "rejected": rejected, "ratio": (clock.now - start) / ideal}


# (simulated case, the most wall time as a multiple of the ideal, the most refusals)
CASES = [
    ({}, 1.1, 30),  # the benchmark: 300 prompts, 50 at a time, 600/min with 2 s of burst, 0.5 s latency
    ({"concurrency": 8}, 1.1, 30),
    ({"round_trip": 0.05}, 1.1, 30),  # refusals come back later: more sends on the wire meanwhile
    ({"n": 100, "per_minute": 60, "burst": 2}, 1.1, RAMP_START + 10),  # a burst below the cold allowance
    ({"n": 1000, "per_minute": 1200, "burst": 20, "latency": 2.0}, 1.2, 100),  # first guess half the limit
]


@pytest.mark.parametrize(("case", "max_ratio", "max_refused"), CASES, ids=[repr(c[0]) for c in CASES])
def test_a_batch_against_a_token_bucket_loses_nothing_and_keeps_near_the_limit(case, max_ratio, max_refused):
    result = simulate(**case)
    assert result["done"] == case.get("n", 300)
    assert result["ratio"] <= max_ratio
    assert result["rejected"] <= max_refused


def test_with_the_limit_known_nothing_is_refused():
    result = simulate(requests_per_minute=600)
    assert (result["done"], result["rejected"]) == (300, 0)
    assert result["ratio"] <= 1.1  # evenly spaced: the burst is not used, so N / rate instead of (N - burst) / rate


def settings(account: str = "acct", base_url: str = "http://127.0.0.1:1/client/v4", rpm: float | None = None):
    return ConnectionSettings("c", base_url, account, "t", requests_per_minute=rpm)


def test_one_pacer_per_account_shared_by_every_thread_and_event_loop():
    seen: list[Pacer] = []

    def in_a_loop() -> None:
        async def get() -> None:
            seen.append(pacer_for(settings()))

        asyncio.run(get())

    threads = [threading.Thread(target=in_a_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(p) for p in seen}) == 1 and seen[0] is pacer_for(settings())
    assert pacer_for(settings(account="other")) is not seen[0]


def test_a_known_limit_comes_from_the_hook_or_the_connection_and_paces_only_its_own_calls():
    pacer = pacer_for(settings(rpm=120))
    assert pacer.rate == 2.0
    assert pacer_for(settings(rpm=120), requests_per_minute=60).rate == 1.0  # the hook's argument wins
    # One DAG's low limit does not slow the calls of a DAG that names none (or another): each has its own pace.
    assert pacer_for(settings()).rate is None
    assert pacer_for(settings(), requests_per_minute=30) is not pacer_for(settings(), requests_per_minute=60)
    assert pacer_for(settings(), requests_per_minute=60) is pacer_for(settings(rpm=60))
