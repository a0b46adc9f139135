"""
The provider's metrics and traces: every name, and the one-line helpers the wire and the task emit them with.

Metrics go through Airflow's own ``Stats``, so they reach whatever the deployment configured (StatsD, Datadog's
DogStatsD or OpenTelemetry, ``[metrics]``) under Airflow's prefix (``airflow.`` by default)::

    imagen.images.generated          images a try obtained from the API (cache hits included)   model
    imagen.images.reused             images a try reused instead of generating them             model, source
    imagen.images.failed             images a try could not obtain or store                     model, kind
    imagen.images.bytes_stored       bytes of the images written to ``output_path``             model
    imagen.generations.billed        calls a model answered, not from a cache (billed)          model
    imagen.generations.cache_hits    answers from AI Gateway's cache (not billed)               model
    imagen.generations.rate_limited  requests refused by a rate limit (not billed, re-sent)     model
    imagen.generations.duration      timer: a successful call, retries and waits included       model

``source`` is ``durable`` (an earlier try's record), ``stored`` (an earlier try's stored copy, still in place),
``dataset`` (the dataset folder's image, made from the same inputs) or ``stored_file`` (a file ``output_path``'s
image, made from the same inputs); ``kind`` one of :data:`FAILURE_KINDS`.

Backends that take tags (OpenTelemetry, Datadog, StatsD with ``statsd_influxdb_enabled``) get the dimensions as
tags. Plain StatsD drops tags, so each metric is also sent with them in its name, model last and sanitized to
letters, digits, ``_`` and ``-`` (``imagen.images.failed.content_policy.google_imagen-4``): a per-model series Graphite
can sum with wildcards, as Airflow's own ``dagrun.duration.success.<dag_id>`` does.

A dataset of 10,000 rows calls these helpers per row: the backend is looked up once per process, and with metrics
off each helper returns after one global read, building nothing.

Traces: where Airflow 3.3's OpenTelemetry tracing is on (``[traces] otel_on``), a task runs under a
``worker.<task_id>`` span and a trigger under a ``trigger.<task_id>`` one; each call to a model adds an
``imagen.generate`` span under it (model, attempts, billed, AI Gateway cache status). Without a recording span
around the call (tracing off; Airflow 3.1, which runs task code under no span) nothing is made.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_imagen.exceptions import (
    CloudflareAuthenticationError,
    CloudflareBadRequestError,
    CloudflareQuotaExceededError,
    CloudflareRateLimitError,
    CloudflareServerError,
    CloudflareWorkersAIError,
    ContentPolicyError,
    GenerationOutcomeUnknownError,
    ImageDownloadError,
    ImageGenerationFailedError,
    SpendLimitError,
    StorageError,
)

if TYPE_CHECKING:
    import httpx

    from airflow_provider_imagen.models import RunResult

log = logging.getLogger(__name__)

GENERATED = "imagen.images.generated"
REUSED = "imagen.images.reused"
FAILED = "imagen.images.failed"
BYTES_STORED = "imagen.images.bytes_stored"
BILLED = "imagen.generations.billed"
CACHE_HITS = "imagen.generations.cache_hits"
RATE_LIMITED = "imagen.generations.rate_limited"
DURATION = "imagen.generations.duration"
#: The span of one call to a model.
SPAN_NAME = "imagen.generate"

#: ``kind`` of a failed image, by the error's type: the first that matches.
_KINDS: tuple[tuple[type[CloudflareWorkersAIError], str], ...] = (
    (ContentPolicyError, "content_policy"),
    (CloudflareQuotaExceededError, "quota"),
    (CloudflareRateLimitError, "rate_limit"),
    (GenerationOutcomeUnknownError, "outcome_unknown"),
    (CloudflareServerError, "transient"),
    (StorageError, "storage"),
    (ImageDownloadError, "download"),
    (CloudflareAuthenticationError, "authentication"),
    (CloudflareBadRequestError, "bad_request"),
    (SpendLimitError, "spend_limit"),
)
FAILURE_KINDS = (*(kind for _, kind in _KINDS), "no_image", "other")

_E = TypeVar("_E", bound=BaseException)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_UNSAFE_INFLUX_TAG = re.compile(r"[^A-Za-z0-9_./-]+")  # Airflow's stat name check, which tagged names pass too


def failure_kind(err: BaseException) -> str | None:
    """Return ``err``'s kind (one of :data:`FAILURE_KINDS`), or ``None`` for an error that is not an image's."""
    if not isinstance(err, CloudflareWorkersAIError):
        return None
    for cls, kind in _KINDS:
        if isinstance(err, cls):
            return kind
    if isinstance(err, ImageGenerationFailedError):
        return "transient" if err.retryable else "no_image"  # provider_unavailable clears; a Failed state does not
    return "transient" if err.retryable else "other"


class _Sink:
    """
    Airflow's ``Stats``, and how its backend takes dimensions: as tags, or (plain StatsD) in the metric's name.

    The names and tags of each (metric, dimensions) are made once and kept: a handful of models and kinds.
    """

    def __init__(self, stats: Any, in_name: bool, influx: bool) -> None:
        self.stats = stats
        self.in_name = in_name
        self.influx = influx
        self._made: dict[tuple[str, ...], tuple[tuple[str, ...], dict[str, str] | None]] = {}

    def _names(self, metric: str, model: str | None, **dims: str) -> tuple[tuple[str, ...], dict[str, str] | None]:
        key = (metric, model or "", *dims.values())
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._make(metric, model or "unknown", dims)
        return made

    def _make(self, metric: str, model: str, dims: dict[str, str]) -> tuple[tuple[str, ...], dict[str, str] | None]:
        if self.in_name:
            label = _UNSAFE_NAME.sub("_", model).strip("_") or "unknown"
            return (metric, ".".join((metric, *dims.values(), label))), None
        value = _UNSAFE_INFLUX_TAG.sub("_", model).strip("_") if self.influx else model
        return (metric,), {"model": value, **dims}

    def incr(self, metric: str, model: str | None, count: int = 1, **dims: str) -> None:
        names, tags = self._names(metric, model, **dims)
        try:
            for name in names:
                self.stats.incr(name, count, tags=tags)
        except Exception:  # a metric never fails a task, nor hides the error being counted
            log.debug("The metric %s could not be sent", metric, exc_info=True)

    def timing(self, metric: str, model: str | None, seconds: float) -> None:
        names, tags = self._names(metric, model)
        try:
            for name in names:
                self.stats.timing(name, datetime.timedelta(seconds=seconds), tags=tags)
        except Exception:
            log.debug("The metric %s could not be sent", metric, exc_info=True)


_UNSET: Any = object()
_sink: _Sink | None = _UNSET  # None: metrics are off
_tracing: Any = _UNSET  # (opentelemetry.trace, the provider's tracer), or None without OpenTelemetry
_lock = threading.Lock()


def _airflow_stats() -> Any:
    """Return Airflow's ``Stats``: the Task SDK's where it has one (3.3), else the core's (3.1)."""
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:
        try:
            from airflow.observability.stats import Stats  # type: ignore[no-redef]
        except ImportError:
            with warnings.catch_warnings():  # deprecated where the Task SDK has its own, but that was tried first
                warnings.simplefilter("ignore")
                from airflow.stats import Stats  # type: ignore[no-redef]
    return Stats


def _look_up() -> _Sink | None:
    from airflow.providers.common.compat.sdk import conf

    def on(option: str) -> bool:
        return bool(conf.getboolean("metrics", option, fallback=False))

    datadog, statsd, otel = on("statsd_datadog_enabled"), on("statsd_on"), on("otel_on")
    if not (datadog or statsd or otel):
        return None
    plain_statsd = statsd and not datadog  # Airflow's choice, in its order: DogStatsD, StatsD, OpenTelemetry
    influx = plain_statsd and on("statsd_influxdb_enabled")
    return _Sink(_airflow_stats(), in_name=plain_statsd and not influx, influx=influx)


def _on() -> _Sink | None:
    global _sink
    sink = _sink
    if sink is _UNSET:
        with _lock:
            if _sink is _UNSET:
                try:
                    _sink = _look_up()
                except Exception:  # metrics never fail a task
                    log.warning("Airflow's metrics could not be set up: the provider emits none", exc_info=True)
                    _sink = None
            sink = _sink
    return sink


def reset() -> None:
    """Forget the backend and tracer looked up (a new process looks them up again: tests use this)."""
    global _sink, _tracing
    with _lock:
        _sink = _tracing = _UNSET


# --- The task: images ---------------------------------------------------------------------------------------


def generated(model: str) -> None:
    """Count an image a try obtained from the API."""
    if (sink := _on()) is not None:
        sink.incr(GENERATED, model)


def reused(model: str | None, source: str) -> None:
    """
    Count an image reused instead of generated.

    :param source: ``durable``, ``stored``, ``dataset`` or ``stored_file`` (see the module's docstring).
    """
    if (sink := _on()) is not None:
        sink.incr(REUSED, model, source=source)


def failure(err: _E, model: str | None = None, kind: str | None = None, *, handed_over: bool = False) -> _E:
    """
    Count ``err`` as an image that failed, by its kind, and return it (to raise).

    Errors that are not an image's (a cancellation, an input refused before any request) are not counted.

    :param model: the model, when the error does not name one.
    :param kind: the kind, when the error's type does not tell it (a sidecar that could not be written: storage).
    :param handed_over: the error goes to a task that may try other models (a trigger's): counted only if final.
    """
    if (sink := _on()) is None:
        return err
    kind = kind or failure_kind(err)
    if kind is None or (handed_over and _may_continue(err)):
        return err
    sink.incr(FAILED, getattr(err, "model", None) or model, kind=kind)
    return err


def _may_continue(err: BaseException) -> bool:
    from airflow_provider_imagen._cloudflare.fallback import is_unserved_error
    from airflow_provider_imagen._cloudflare.retry import is_unavailable

    return is_unavailable(err) or (isinstance(err, CloudflareWorkersAIError) and is_unserved_error(err))


def stored(local_path: str, model: str | None) -> None:
    """Count the bytes of an image stored, from the local file it was written from."""
    if (sink := _on()) is not None:
        try:
            size = os.path.getsize(local_path)
        except OSError:
            return
        sink.incr(BYTES_STORED, model, size)


def stored_bytes(size: int, model: str | None) -> None:
    """Count the bytes of an image stored from memory (a dataset's local folder)."""
    if (sink := _on()) is not None:
        sink.incr(BYTES_STORED, model, size)


# --- The wire: calls ------------------------------------------------------------------------------------------


def rate_limited(model: str, exc: BaseException) -> None:
    """Count a refusal by a rate limit (429, 3040, wholesale throttling): nothing ran, nothing is billed."""
    if isinstance(exc, CloudflareRateLimitError) and exc.retryable and (sink := _on()) is not None:
        sink.incr(RATE_LIMITED, model)


def answered(result: RunResult, response: httpx.Response) -> RunResult:
    """
    Count a call a model answered (billed, or a cache hit), time it, trace it; return ``result``.

    :param result: the call's result, with its attempts and elapsed time.
    :param response: the answer, whose ``cf-aig-cache-status`` tells a cache hit.
    """
    sink, tracing = _on(), _tracer()
    if sink is None and tracing is None:
        return result
    cache = response.headers.get("cf-aig-cache-status")
    hit = cache is not None and cache.upper() == "HIT"
    if sink is not None:
        sink.incr(CACHE_HITS if hit else BILLED, result.model)
        sink.timing(DURATION, result.model, result.elapsed_seconds)
    if tracing is not None:
        attributes = {"imagen.billed": not hit, "imagen.cache_status": (cache or "none").upper()}
        _span(tracing, result.model, result.attempts, result.elapsed_seconds, attributes)
    return result


def call_failed(err: _E, started: float) -> _E:
    """Trace a call that ended in ``err`` (annotated with its model and attempts); return ``err``."""
    if (tracing := _tracer()) is not None:
        attributes: dict[str, Any] = {
            "imagen.billed": False,
            "imagen.maybe_billed": bool(getattr(err, "maybe_billed", False)),
            "imagen.error.kind": failure_kind(err) or type(err).__name__,
        }
        model, attempts = getattr(err, "model", None) or "unknown", getattr(err, "attempts", 1)
        _span(tracing, model, attempts, time.monotonic() - started, attributes, err)
    return err


# --- Traces -----------------------------------------------------------------------------------------------


def _tracer() -> Any:
    """Return OpenTelemetry's ``trace`` and the provider's tracer when a recording span is current, else ``None``."""
    tracing = _tracing
    if tracing is _UNSET:
        tracing = _look_up_tracer()
    if tracing is None or not tracing[0].get_current_span().is_recording():
        return None
    return tracing


def _look_up_tracer() -> Any:
    global _tracing
    with _lock:
        if _tracing is _UNSET:
            try:
                from opentelemetry import trace

                from airflow_provider_imagen import __version__

                # A proxy until Airflow sets the process's tracer provider, then that provider's tracer.
                _tracing = (trace, trace.get_tracer("airflow_provider_imagen", __version__))
            except ImportError:
                _tracing = None
        return _tracing


def _span(
    tracing: Any, model: str, attempts: int, seconds: float, attributes: dict[str, Any], error: Any = None
) -> None:
    """Record one call's span under the current one, from when the call started to now."""
    trace, tracer = tracing
    end = time.time_ns()
    try:
        span = tracer.start_span(
            SPAN_NAME,
            start_time=end - int(seconds * 1e9),
            attributes={"imagen.model": model, "imagen.attempts": attempts, **attributes},
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
        span.end(end_time=end)
    except Exception:  # a span never fails a task
        log.debug("The span of a call to %s could not be recorded", model, exc_info=True)
