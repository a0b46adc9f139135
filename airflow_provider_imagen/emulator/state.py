"""
What the emulator is configured to do and what it remembers.

The limits and Cloudflare's model names it states, :class:`EmulatorConfig`, and :class:`EmulatorState`
(counters, queued faults, AI Gateway's cache, the images it promised, and the stats it reports).
"""

from __future__ import annotations

import random
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_provider_imagen.emulator.faults import TRANSIENT_PRESETS, Fault, TokenBucket, make_fault
from airflow_provider_imagen.emulator.schemas import MODELS

DEFAULT_TOKEN = "emulator-token"
# The emulator states Cloudflare's schema itself rather than importing the provider's models, so that the
# provider's validation is tested against an independent statement of it.
IMAGEN_SIZES = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}
PERSON_GENERATION = ("dont_allow", "allow_adult", "allow_all")
FLUX = "@cf/black-forest-labs/flux-1-schnell"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
#: Third-party models answer in the proxied ``state`` shape; ``@cf/`` models in the v4 envelope.
PROXIED_MODELS = {model.id for model in MODELS.values() if model.proxied}
MAX_BODY_BYTES = 1_000_000
#: Multipart forms carry reference images: Cloudflare accepts bodies up to 10 MB.
MAX_FORM_BYTES = 10_000_000
MAX_LATENCY_SECONDS = 120.0
MAX_REMEMBERED_IMAGES = 100_000
MAX_RECORDED_REQUESTS = 1_000
#: Seconds AI Gateway keeps an answer under a cache key when the request names no cf-aig-cache-ttl.
DEFAULT_CACHE_TTL = 300
#: Faults that break the answer after the model ran (an empty 200 too): the image exists, and is billed, but
#: the client loses it.
LOST_AFTER_GENERATION = frozenset({"drop", "truncated"})


@dataclass
class EmulatorConfig:
    """
    How the emulator behaves.

    :param token: the API token it accepts.
    :param latency: seconds each generation takes (bounded to 120).
    :param public_url: base of the image URLs it returns; the request's own base URL when unset.
    :param failure_rate: share (0..1) of API requests answered with a random transient fault.
    :param token_status: what ``tokens/verify`` reports: ``active``, ``disabled`` or ``expired``.
    :param token_kind: ``user`` (My Profile > API Tokens, the common kind) or ``account`` (account-owned):
        each verify route refuses the other kind, as Cloudflare's do.
    :param workers_ai_access: whether the token may use Workers AI (``ai/models/search`` refuses it if not).
    :param seed: seed of the random failures, for repeatable drills.
    :param rate_limit_per_minute: the account's rate limit (a token bucket); requests over it get 429, code
        3040 and ``Retry-After``, and are not billed. ``None``: no limit.
    :param rate_limit_burst: requests the limit accepts at once; one second's worth if unset.
    :param strict_inputs: refuse an input a Cloudflare model's schema does not list (400, code 5004), as
        Cloudflare does for a schema that forbids additional properties (FLUX.1 schnell's). Off by default:
        such an input is then ignored and counted (``ignored_inputs`` in the stats), as the emulator always
        did for ``@cf/`` models; third-party models (Imagen 4, Nano Banana) refuse it either way.
    """

    token: str = field(default=DEFAULT_TOKEN, repr=False)
    latency: float = 0.0
    public_url: str | None = None
    failure_rate: float = 0.0
    token_status: str = "active"
    token_kind: str = "user"
    workers_ai_access: bool = True
    seed: int | None = None
    rate_limit_per_minute: float | None = None
    rate_limit_burst: float | None = None
    strict_inputs: bool = False

    def __post_init__(self) -> None:
        if self.rate_limit_per_minute is not None and not 0 < self.rate_limit_per_minute <= 1_000_000:
            raise ValueError(f"rate_limit_per_minute must be 0..1000000, got {self.rate_limit_per_minute}")
        if self.rate_limit_burst is not None and not 1 <= self.rate_limit_burst <= 1_000_000:
            raise ValueError(f"rate_limit_burst must be 1..1000000, got {self.rate_limit_burst}")
        if not 0 <= self.latency <= MAX_LATENCY_SECONDS:
            raise ValueError(f"latency must be 0..{MAX_LATENCY_SECONDS} seconds, got {self.latency}")
        if not 0 <= self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be between 0 and 1, got {self.failure_rate}")
        if self.token_status not in ("active", "disabled", "expired"):
            raise ValueError(f"token_status must be active, disabled or expired, got {self.token_status!r}")
        if self.token_kind not in ("user", "account"):
            raise ValueError(f"token_kind must be user or account, got {self.token_kind!r}")


class EmulatorState:
    """Everything the emulator remembers: queued faults, counters, and the images it promised."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.initial = config
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget faults, counters, images, the cache and configuration changes."""
        with self.lock:
            self.config = EmulatorConfig(**asdict(self.initial))
            self.rng = random.Random(self.config.seed)
            self.faults: deque[Fault] = deque()
            self.image_faults: deque[Fault] = deque()
            self.counts: Counter[str] = Counter()
            # image id -> what render() takes: (prompt, width, height, Pillow format)
            self.images: OrderedDict[str, tuple[str, int, int, str]] = OrderedDict()
            self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED_REQUESTS)
            # AI Gateway's cache: key -> (expiry on the loop clock, the answer's body)
            self.cache: dict[str, tuple[float, bytes]] = {}
            self.limit_changed()

    def limit_changed(self) -> None:
        """Start a full bucket for the configured rate limit (called with the lock held)."""
        per_minute = self.config.rate_limit_per_minute
        self.bucket = TokenBucket(per_minute, self.config.rate_limit_burst) if per_minute else None

    def over_limit(self) -> float | None:
        """``None`` if the rate limit lets a request through, else the seconds until it would."""
        with self.lock:
            wait = self.bucket.take() if self.bucket is not None else None
            if wait is not None:
                self.counts["rate_limited"] += 1
            return wait

    def next_image_fault(self) -> Fault | None:
        """Return the first queued fault for an image download, or ``None``."""
        with self.lock:
            if self.image_faults:
                self.counts["faults_served"] += 1
                return self.image_faults.popleft()
        return None

    def queue(self, faults: list[Fault]) -> int:
        """Queue ``faults`` (each for API calls or image downloads, by its target), and return how many are pending."""
        with self.lock:
            for fault in faults:
                (self.image_faults if fault.target == "image" else self.faults).append(fault)
            return len(self.faults) + len(self.image_faults)

    def next_fault(self, model: str | None = None) -> Fault | None:
        """
        Return the fault for a call to ``model``, or ``None``.

        The first queued fault for it (faults for other models wait for theirs), else a random transient one
        at the configured failure rate.
        """
        with self.lock:
            for fault in self.faults:
                if fault.model is None or fault.model == model:
                    self.faults.remove(fault)
                    self.counts["faults_served"] += 1
                    return fault
            if self.config.failure_rate and self.rng.random() < self.config.failure_rate:
                self.counts["faults_served"] += 1
                return make_fault(self.rng.choice(TRANSIENT_PRESETS))
        return None

    def remember_image(self, image_id: str, prompt: str, width: int, height: int, fmt: str = "PNG") -> None:
        """
        Remember what to render for ``image_id``, forgetting the oldest image past the limit.

        :param image_id: the id in the image's URL.
        :param prompt: the text written on the image.
        :param width: the image's width in pixels.
        :param height: the image's height in pixels.
        :param fmt: the Pillow format.
        """
        with self.lock:
            self.images[image_id] = (prompt, width, height, fmt)
            self.images.move_to_end(image_id)
            while len(self.images) > MAX_REMEMBERED_IMAGES:
                self.images.popitem(last=False)

    def _ignored_inputs(self) -> dict[str, dict[str, int]]:
        """``{model: {input: times}}`` of the inputs a lenient emulator ignored (called with the lock held)."""
        ignored: dict[str, dict[str, int]] = {}
        for key, times in self.counts.items():
            if key.startswith("ignored:"):
                model, _, name = key[8:].rpartition(":")
                ignored.setdefault(model, {})[name] = times
        return ignored

    def stats(self) -> dict[str, Any]:
        """Return the counters, pending faults and most recent requests, as ``/__emulator__/stats`` reports them."""
        with self.lock:
            return {
                "api_requests": self.counts["api"],
                "image_requests": self.counts["image"],
                "verify_requests": self.counts["verify"],
                "generations": self.counts["generations"],
                "cache_hits": self.counts["cache_hits"],
                "rate_limited": self.counts["rate_limited"],
                "generations_by_prompt": {k[7:]: v for k, v in self.counts.items() if k.startswith("prompt:")},
                "faults_served": self.counts["faults_served"],
                "faults_pending": len(self.faults) + len(self.image_faults),
                "by_model": {k[6:]: v for k, v in self.counts.items() if k.startswith("model:")},
                "generations_by_model": {k[10:]: v for k, v in self.counts.items() if k.startswith("generated:")},
                "ignored_inputs": self._ignored_inputs(),
                "recent": list(self.recent),
            }
