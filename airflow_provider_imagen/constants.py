"""Plain constants, importable at DAG-parse time without pulling in pydantic models or httpx."""

from __future__ import annotations

IMAGEN_4 = "google/imagen-4"
#: Cloudflare's own models: run at ``.../ai/run/{model}`` with the input as body, and answer with image bytes.
CLOUDFLARE_MODEL_PREFIXES: tuple[str, ...] = ("@cf/", "@hf/")
DEFAULT_CONN_ID = "cloudflare_workers_ai_default"
#: The most retries a connection or hook may ask for: each may be billed.
MAX_MAX_RETRIES = 10
#: The highest ``requests_per_minute`` accepted: far above any published Workers AI limit.
MAX_REQUESTS_PER_MINUTE = 1_000_000
CONN_TYPE = "cloudflare_workers_ai"

ASPECT_RATIOS: tuple[str, ...] = ("1:1", "3:4", "4:3", "9:16", "16:9")
PERSON_GENERATION: tuple[str, ...] = ("dont_allow", "allow_adult", "allow_all")

#: Pixel size of each aspect ratio (Google's Imagen 4 1K sizes), as (width, height).
IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}

#: The default cap on a downloaded image: Imagen 4 1K PNGs are a few MB; the cap stops a host filling a disk.
MAX_IMAGE_BYTES = 100 * 1024 * 1024

#: Google limits Imagen 4 prompts to about 480 tokens; 2,000 characters stays clear of it for English.
MAX_PROMPT_CHARS = 2000

#: The longest a deferred generation may wait in the triggerer before the task fails.
DEFER_TIMEOUT_SECONDS = 3600

#: Seconds after a deferral before its trigger may fire, by default: out of an Airflow race (see
#: :mod:`airflow_provider_imagen.triggers.imagen`). The executor may report the deferring process up to
#: ``[workers] min_heartbeat_interval`` (5 s) after it exited; ``[imagen] deferral_min_seconds`` sets another.
DEFERRAL_MIN_SECONDS = 10.0


def deferral_min_seconds() -> float:
    """Return ``[imagen] deferral_min_seconds``: how long after a deferral its trigger may fire at the earliest."""
    from airflow.providers.common.compat.sdk import conf

    try:
        value = float(conf.get("imagen", "deferral_min_seconds", fallback=str(DEFERRAL_MIN_SECONDS)))
    except ValueError:
        return DEFERRAL_MIN_SECONDS
    if value != value:  # NaN would turn the hold off silently
        return DEFERRAL_MIN_SECONDS
    return min(max(value, 0.0), 60.0)
