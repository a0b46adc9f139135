"""
Faults the emulator can serve instead of a normal answer.

Every row of Cloudflare's error table, and the things edges do that no document promises.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The longest delay any fault may add, so a test or drill can never hang on the emulator.
MAX_DELAY_SECONDS = 120.0

FaultKind = Literal[
    "error",  # an HTTP status with Cloudflare's v4 error envelope
    "proxied_error",  # an HTTP status with the proxied {"state": "Failed", "error": ...} shape
    "state_failed",  # HTTP 200, state Failed
    "success_false",  # HTTP 200, success: false
    "unknown_state",  # HTTP 200, a state other than Completed or Failed
    "no_image",  # HTTP 200, state Completed but no image in the result
    "html",  # an edge's HTML error page
    "empty",  # an empty body
    "truncated",  # JSON cut off half way
    "drop",  # the connection closes in the middle of the response
    "slow",  # a normal answer, after `delay` seconds
    "not_image",  # (image downloads) HTTP 200 with bytes that are not an image
    "huge",  # (image downloads) a PNG-signed body of `size` bytes, streamed without a length
]


class Fault(BaseModel):
    """
    One injected answer.

    :param kind: what to serve (see :data:`FaultKind`).
    :param status: the HTTP status (defaults per kind).
    :param code: Cloudflare's error code, or a failed state's code.
    :param message: the error message.
    :param retry_after: a ``Retry-After`` header value (seconds or an HTTP date), if any.
    :param delay: seconds to wait before answering (``slow``; bounded).
    :param state: the state an ``unknown_state`` fault reports.
    :param target: ``api`` for Workers AI calls, ``image`` for downloads of generated images.
    :param size: bytes a ``huge`` image body has.
    :param model: only a call to this model is served the fault (calls to other models pass it by); any call when
        unset. To make one model unavailable while its fallbacks work.
    """

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind = "error"
    status: int | None = Field(default=None, ge=100, le=599)
    code: int | str | None = None
    message: str | None = None
    retry_after: str | None = None
    delay: float = Field(default=0.0, ge=0.0, le=MAX_DELAY_SECONDS)
    state: str = "Running"
    target: Literal["api", "image"] = "api"
    size: int = Field(default=0, ge=0, le=2**31)
    model: str | None = None

    @model_validator(mode="after")
    def _defaults(self) -> Fault:
        if self.status is None:
            self.status = {"error": 500, "proxied_error": 500, "html": 502}.get(self.kind, 200)
        return self


#: Named faults, one for each row of the error table in Cloudflare's documentation.
PRESETS: dict[str, dict[str, Any]] = {
    "capacity": {"status": 429, "code": 3040, "message": "Capacity temporarily exceeded, please try again."},
    "daily_limit": {
        "status": 429,
        "code": 3036,
        "message": "You have used up your daily free allocation of 10,000 neurons, please upgrade.",
    },
    "wholesale_throttle": {"status": 429, "code": 2021, "message": "Wholesale rate limit exceeded"},
    "wholesale_throttle_402": {"status": 402, "code": 2021, "message": "Wholesale rate limit exceeded"},
    "wholesale_throttle_200": {"kind": "success_false", "code": 2021, "message": "Wholesale rate limit exceeded"},
    "unified_billing_unavailable": {
        "status": 400,
        "code": 2021,
        "message": "This model is not available via unified billing. Please use your own provider key.",
    },
    "invalid_data": {"status": 400, "code": 5004, "message": "Invalid data"},
    "incomplete_request": {"status": 400, "code": 3003, "message": "Incomplete request"},
    "no_such_model": {"status": 400, "code": 5007, "message": "No such model"},
    "input_error": {"status": 400, "code": 7003, "message": "Input error"},
    "provider_auth": {"status": 401, "code": 2009, "message": "Provider credentials rejected"},
    "auth": {"status": 403, "code": 10000, "message": "Authentication error"},
    "invalid_model": {"status": 404, "code": 3042, "message": "Invalid model ID"},
    "model_not_found": {"status": 404, "code": 7003, "message": "Model not found"},
    "timeout": {"status": 408, "code": 3007, "message": "Request timeout"},
    "aborted": {"status": 408, "code": 3008, "message": "Request aborted"},
    "too_large": {"status": 413, "code": 3006, "message": "Request is too large"},
    "internal": {"status": 500, "code": 3043, "message": "Internal server error"},
    "bad_gateway": {"kind": "html", "status": 502},
    "unavailable": {"status": 503, "message": "Service Unavailable"},
    "gateway_timeout": {"kind": "html", "status": 504},
    "provider_unavailable": {
        "kind": "state_failed",
        "code": "provider_unavailable",
        "message": "The upstream provider is unavailable.",
    },
    "content_policy": {
        "kind": "state_failed",
        "code": "content_policy_violation",
        "message": "The prompt was blocked by the provider's safety filters.",
    },
    "success_false": {"kind": "success_false", "code": 3040, "message": "Capacity temporarily exceeded"},
    "unknown_state": {"kind": "unknown_state", "state": "Queued"},
    "no_image": {"kind": "no_image"},
    "html_502": {"kind": "html", "status": 502},
    "empty": {"kind": "empty", "status": 200},
    "empty_502": {"kind": "empty", "status": 502},
    "truncated": {"kind": "truncated", "status": 200},
    "drop": {"kind": "drop"},
    "slow": {"kind": "slow", "delay": 5.0},
    # Downloads of the generated image.
    "image_not_found": {"target": "image", "kind": "error", "status": 404},
    "image_server_error": {"target": "image", "kind": "error", "status": 503},
    "image_not_an_image": {"target": "image", "kind": "not_image"},
    "image_drop": {"target": "image", "kind": "drop"},
    "image_huge": {"target": "image", "kind": "huge", "size": 200 * 1024 * 1024},
    "image_slow": {"target": "image", "kind": "slow", "delay": 5.0},
}

#: The presets a client is expected to retry: used for the random failure rate.
TRANSIENT_PRESETS = ("capacity", "internal", "bad_gateway", "unavailable", "timeout", "provider_unavailable")


def make_fault(preset: str | None = None, **overrides: Any) -> Fault:
    """
    Return a :class:`Fault` from a preset name and/or explicit fields.

    :param preset: a name from :data:`PRESETS`.
    :param overrides: fault fields that replace the preset's; ``None`` values are ignored.
    :raises ValueError: if ``preset`` is unknown.
    """
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown fault preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Fault(**values)


class TokenBucket:
    """
    The account's rate limit: ``per_minute`` requests a minute, up to ``burst`` at once.

    A bucket that holds ``burst`` tokens and refills continuously. A request that finds it empty is refused
    before it runs.

    :param per_minute: the sustained rate.
    :param burst: the most requests accepted at once (the bucket's size); one second's worth if unset.
    :param clock: seconds on a monotonic clock.
    """

    def __init__(self, per_minute: float, burst: float | None = None, clock: Any = time.monotonic) -> None:
        self.rate = per_minute / 60
        self.size = max(1.0, burst if burst is not None else self.rate)
        self._clock = clock
        self._tokens = self.size
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """Take a token: ``None`` if one was there, else the seconds until one will be."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.size, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return None
            return (1 - self._tokens) / self.rate


def rate_limited_fault(wait: float) -> Fault:
    """
    Return the refusal of a request over the limit: 429, code 3040, and ``Retry-After`` in whole seconds (>= 1).

    :param wait: the seconds until the limit would let the request through.
    """
    return make_fault("capacity", retry_after=str(max(1, math.ceil(wait))))
