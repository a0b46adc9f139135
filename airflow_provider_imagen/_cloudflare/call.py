"""
One call to Workers AI: the request sent, re-sent as :mod:`.retry` decides, at the pace :mod:`.pacing` keeps.

The sync and async twins differ only in their awaits. Every answer is read by :mod:`.response`, every failure
on the wire mapped by :mod:`.transport`; the error that ends a call names the model, the requests sent, and
whether any of them may have made a billed image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import AsyncRetrying, Retrying

from airflow_provider_imagen import _metrics
from airflow_provider_imagen._cloudflare.pacing import Pacer, pacer_for
from airflow_provider_imagen._cloudflare.response import parse_response
from airflow_provider_imagen._cloudflare.retry import CallRecord, annotate, is_idempotent, retry_policy
from airflow_provider_imagen._cloudflare.rules import returns_bytes
from airflow_provider_imagen._cloudflare.transport import transport_error
from airflow_provider_imagen.exceptions import CloudflareWorkersAIError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from logging import Logger

    from airflow_provider_imagen._cloudflare.settings import ConnectionSettings
    from airflow_provider_imagen.models import GatewayOptions, RunResult


@dataclass(frozen=True)
class CallLimits:
    """
    How hard one call tries: the hook's settings, over the connection's.

    :param max_retries: retries of transient failures; the connection's when ``None``.
    :param retry_backoff: seconds before the first retry.
    :param max_retry_wait: the longest single wait between attempts.
    :param requests_per_minute: the pace never exceeded; the connection's when ``None``.
    :param max_rate_limit_wait: seconds a call re-sends after its first refusal by a rate limit.
    """

    max_retries: int | None
    retry_backoff: float
    max_retry_wait: float
    requests_per_minute: float | None
    max_rate_limit_wait: float


@dataclass
class _Call:
    request: httpx.Request
    pacer: Pacer
    record: CallRecord
    policy: dict[str, Any]
    started: float


def _prepare(
    client: httpx.Client | httpx.AsyncClient,
    settings: ConnectionSettings,
    limits: CallLimits,
    model: str,
    input: Mapping[str, Any],
    options: GatewayOptions | None,
    log: Logger,
    fallback_follows: bool,
) -> _Call:
    request = settings.build_request(client, model, input, options)
    record = CallRecord()
    policy = retry_policy(
        attempts=1 + (settings.max_retries if limits.max_retries is None else limits.max_retries),
        backoff=limits.retry_backoff,
        max_wait=limits.max_retry_wait,
        rate_limit_wait=limits.max_rate_limit_wait,
        idempotent=is_idempotent(request, returns_bytes(model)),
        log=log,
        model=model,
        call=record,
        capacity_is_attempt=fallback_follows,  # a model another may stand in for is spent when its retries are
    )
    pacer = pacer_for(settings, limits.requests_per_minute, model)
    return _Call(request, pacer, record, policy, time.monotonic())


def _finished(call: _Call, result: RunResult, attempts: int) -> RunResult:
    return result.model_copy(update={"attempts": attempts, "elapsed_seconds": time.monotonic() - call.started})


def send(
    client: httpx.Client,
    settings: ConnectionSettings,
    limits: CallLimits,
    model: str,
    input: Mapping[str, Any],
    options: GatewayOptions | None,
    log: Logger,
    *,
    fallback_follows: bool = False,
) -> RunResult:
    """
    Send one model call, re-sending it as the retry policy allows, and return its parsed answer.

    :param client: the pooled client.
    :param settings: the validated connection.
    :param limits: how hard to try.
    :param model: the model id.
    :param input: the model's input object.
    :param options: AI Gateway options.
    :param log: where each retry is logged.
    :param fallback_follows: another model may stand in: capacity refusals count as attempts.
    :raises CloudflareWorkersAIError: (a subclass) once retries are spent or on a final error.
    """
    call = _prepare(client, settings, limits, model, input, options, log, fallback_follows)
    attempts = 0
    try:
        for attempt in Retrying(**call.policy):
            with attempt, call.pacer.wait_turn():  # the turn reports the answer to the account's pacer
                attempts = attempt.retry_state.attempt_number
                try:
                    response = client.send(call.request)
                except (httpx.TransportError, httpx.DecodingError) as exc:
                    raise transport_error(exc, settings.host) from exc
                result = parse_response(response, model)
    except CloudflareWorkersAIError as err:
        failed = annotate(err, model, attempts, call.record, settings.conn_id)
        raise _metrics.call_failed(failed, call.started)  # noqa: B904 - raised from err's cause
    return _metrics.answered(_finished(call, result, attempts), response)


async def asend(
    client: httpx.AsyncClient,
    settings: ConnectionSettings,
    limits: CallLimits,
    model: str,
    input: Mapping[str, Any],
    options: GatewayOptions | None,
    log: Logger,
    *,
    fallback_follows: bool = False,
) -> RunResult:
    """Do the same as :func:`send`, without blocking the event loop."""
    call = _prepare(client, settings, limits, model, input, options, log, fallback_follows)
    attempts = 0
    try:
        async for attempt in AsyncRetrying(**call.policy):
            with attempt, await call.pacer.turn():
                attempts = attempt.retry_state.attempt_number
                try:
                    response = await client.send(call.request)
                except (httpx.TransportError, httpx.DecodingError) as exc:
                    raise transport_error(exc, settings.host) from exc
                result = parse_response(response, model)
    except CloudflareWorkersAIError as err:
        failed = annotate(err, model, attempts, call.record, settings.conn_id)
        raise _metrics.call_failed(failed, call.started)  # noqa: B904 - raised from err's cause
    return _metrics.answered(_finished(call, result, attempts), response)
