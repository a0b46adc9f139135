"""
The deferrable path: the Cloudflare call made in the triggerer's event loop, never blocking it.

Airflow persists what :meth:`ImagenGenerateImageTrigger.serialize` returns with every deferral, and a task may
resume on a newer version of this provider than the one that deferred it, so both the class path and the
serialized kwargs are a persisted schema. The class path is a literal (a move of the class must keep an alias
at that path). The kwargs, version 1:

============================  ===================================================================
key                           value
============================  ===================================================================
``schema_version``            ``1``
``prompt``                    the prompt (str)
``aspect_ratio``              str or null
``person_generation``         str or null
``cloudflare_conn_id``        the connection id; the trigger reads the connection itself, so no secret is stored
``model``                     the model id
``fallback_models``           list of model ids answering with a URL, or null
``fallback_follows``          bool: the task tries more models (answering in bytes) if these are unavailable
``gateway_options``           dict of :class:`~airflow_provider_imagen.models.GatewayOptions` fields, or null
``timeout``                   float or null
``max_retries``               int or null
``retry_backoff``             float
``max_retry_wait``            float
``requests_per_minute``       float or null
``max_rate_limit_wait``       float
``hold_until``                float or null: epoch seconds before which no event is fired
``model_inputs``              dict of the model's own inputs (JSON values, never bytes), or null
============================  ===================================================================

A later version adds keys with defaults and never changes the meaning of one; an unknown ``schema_version`` is
refused.

``hold_until`` keeps a fast answer out of an Airflow race: when a trigger fires within a second or two of the
deferral, on a busy machine the scheduler can receive the executor's event for the deferring process after the
trigger's event re-queued the task, and fail it ("finished with state success, but the task instance's state
attribute is queued", apache/airflow#66374, #72716). The operator sets it to a few seconds after the deferral
(``[imagen] deferral_min_seconds``, default 10: the task supervisor notices the deferring process's exit up to
``[workers] min_heartbeat_interval``, 5 s, after it); a real generation often takes that long anyway.

The trigger fires exactly one event, version 1:

- ``{"status": "success", "image": {...}}``: the image as
  :meth:`~airflow_provider_imagen.models.GeneratedImage.to_xcom` describes it (a URL, never bytes);
- ``{"status": "error", "error": {...}, "inputs": {...}}``: the error as
  :func:`~airflow_provider_imagen.exceptions.error_to_dict` describes it, and the prompt, aspect ratio and
  person generation it was for.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_imagen import _metrics
from airflow_provider_imagen._cloudflare.rules import first_bytes_model, model_chain
from airflow_provider_imagen.constants import DEFAULT_CONN_ID, IMAGEN_4
from airflow_provider_imagen.exceptions import InvalidInputError, error_to_dict

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: The version of the serialized kwargs and of the event (see the module's docstring).
SCHEMA_VERSION = 1
#: The longest a trigger holds its event, whatever ``hold_until`` says (a clock jump must not park a task).
MAX_HOLD_SECONDS = 60.0


class ImagenGenerateImageTrigger(BaseTrigger):
    """
    Generate one image with the async hook and fire a single event.

    The event is ``{"status": "success", "image": {...}}`` or ``{"status": "error", "error": {...}}``.

    The serialized kwargs hold only the connection id and the generation's inputs: the trigger reads the
    connection itself (asynchronously), so no secret is stored with it. All triggers of one triggerer share
    one HTTP connection pool per connection.

    :param cloudflare_conn_id: the Cloudflare Workers AI connection.
    :param prompt: what to draw.
    :param aspect_ratio: ``1:1``, ``3:4``, ``4:3``, ``9:16`` or ``16:9``.
    :param person_generation: ``dont_allow``, ``allow_adult`` or ``allow_all``.
    :param model: the model id.
    :param fallback_models: models to try in turn when the one before is unavailable
        (:mod:`~airflow_provider_imagen._cloudflare.fallback`); models that answer with a URL only, as an event
        carries no image bytes.
    :param fallback_follows: the task tries more models on its worker if these are unavailable (models that answer
        with bytes): the last model here is then passed over as the others are, once its retries are spent.
    :param gateway_options: AI Gateway options, as a dict.
    :param timeout: seconds to wait for Cloudflare (the connection's when unset).
    :param max_retries: retries of transient failures (the connection's when unset).
    :param retry_backoff: seconds before the first retry.
    :param max_retry_wait: the longest single wait between attempts.
    :param requests_per_minute: the account's rate limit, if known (the connection's when unset): every trigger
        of the triggerer that calls the account shares one pace (:mod:`~airflow_provider_imagen._cloudflare.pacing`).
    :param max_rate_limit_wait: seconds a call keeps re-sending after a rate limit refused it.
    :param hold_until: epoch seconds before which the event is not fired (see the module's docstring).
    :param model_inputs: the model's own inputs, as for the hook; JSON values only (a trigger's kwargs are
        stored as JSON, so bytes such as FLUX.2's ``input_image_0`` are refused).
    :param schema_version: the version of the serialized kwargs; only the current one is accepted.
    """

    def __init__(
        self,
        *,
        prompt: str,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        cloudflare_conn_id: str = DEFAULT_CONN_ID,
        model: str = IMAGEN_4,
        fallback_models: list[str] | None = None,
        fallback_follows: bool = False,
        gateway_options: dict[str, Any] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_backoff: float = 1.0,
        max_retry_wait: float = 60.0,
        requests_per_minute: float | None = None,
        max_rate_limit_wait: float = 600.0,
        hold_until: float | None = None,
        model_inputs: dict[str, Any] | None = None,
        schema_version: int = SCHEMA_VERSION,
    ) -> None:
        super().__init__()
        if schema_version != SCHEMA_VERSION:
            raise InvalidInputError(
                f"Invalid schema_version {schema_version!r} for ImagenGenerateImageTrigger: this provider reads "
                f"version {SCHEMA_VERSION}; resume the task with the provider version that deferred it"
            )
        # The same rules as the hook's, before the trigger is stored; and no model whose image (bytes) an event
        # could not carry: it would be billed and lost.
        chain = model_chain(model, fallback_models)
        found = first_bytes_model(chain)
        if found is not None:
            index, field = found
            raise InvalidInputError(
                f"Invalid {field} for a trigger: {chain[index]!r} answers with image bytes, which a trigger event "
                "does not carry; generate it in the task (the operator does so when it follows unavailable models)"
            )
        refuse_bytes(model_inputs)
        self.model_inputs = dict(model_inputs) if model_inputs else None
        self.prompt = prompt
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.cloudflare_conn_id = cloudflare_conn_id
        self.model = model
        self.fallback_models = list(fallback_models) if fallback_models else None
        self.fallback_follows = fallback_follows
        self.gateway_options = gateway_options
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_retry_wait = max_retry_wait
        self.requests_per_minute = requests_per_minute
        self.max_rate_limit_wait = max_rate_limit_wait
        if hold_until is not None and (isinstance(hold_until, bool) or not isinstance(hold_until, (int, float))):
            raise InvalidInputError(f"Invalid hold_until: epoch seconds or None, got {hold_until!r}")
        self.hold_until = hold_until

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the class path and the kwargs Airflow persists with the deferral (schema in the module doc)."""
        return (
            "airflow_provider_imagen.triggers.imagen.ImagenGenerateImageTrigger",
            {
                "schema_version": SCHEMA_VERSION,
                "prompt": self.prompt,
                "aspect_ratio": self.aspect_ratio,
                "person_generation": self.person_generation,
                "cloudflare_conn_id": self.cloudflare_conn_id,
                "model": self.model,
                "fallback_models": self.fallback_models,
                "fallback_follows": self.fallback_follows,
                "gateway_options": self.gateway_options,
                "timeout": self.timeout,
                "max_retries": self.max_retries,
                "retry_backoff": self.retry_backoff,
                "max_retry_wait": self.max_retry_wait,
                "requests_per_minute": self.requests_per_minute,
                "max_rate_limit_wait": self.max_rate_limit_wait,
                "hold_until": self.hold_until,
                "model_inputs": self.model_inputs,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Generate the image and yield one event: its image, or the error (never raised into the triggerer)."""
        event = await self._generate()
        if self.hold_until is not None and (delay := self.hold_until - time.time()) > 0:
            await asyncio.sleep(min(delay, MAX_HOLD_SECONDS))
        yield event

    async def _generate(self) -> TriggerEvent:
        from airflow_provider_imagen.hooks.cloudflare import CloudflareWorkersAIHook

        try:
            async with CloudflareWorkersAIHook(
                self.cloudflare_conn_id,
                timeout=self.timeout,
                max_retries=self.max_retries,
                retry_backoff=self.retry_backoff,
                max_retry_wait=self.max_retry_wait,
                requests_per_minute=self.requests_per_minute,
                max_rate_limit_wait=self.max_rate_limit_wait,
                share_async_client=True,
            ) as hook:
                image = await hook.agenerate_image(
                    self.prompt,
                    self.aspect_ratio,
                    self.person_generation,
                    model=self.model,
                    fallback_models=self.fallback_models,
                    gateway_options=self.gateway_options,
                    model_inputs=self.model_inputs,
                    fallback_follows=self.fallback_follows,
                )
        except Exception as err:
            _metrics.failure(err, self.model, handed_over=self.fallback_follows)  # the task counts what it goes on with
            # Every failure, a missing connection included, fails the task through one event, never the
            # triggerer; the message names the connection when the cause is not Cloudflare's answer. The inputs
            # go back too: a task that goes on with models that answer in bytes needs them.
            error = error_to_dict(err, conn_id=self.cloudflare_conn_id)
            inputs = {key: getattr(self, key) for key in ("prompt", "aspect_ratio", "person_generation")}
            return TriggerEvent({"status": "error", "error": error, "inputs": inputs})
        if image.url is None:  # a model outside the documented ones, that answered with bytes after all
            message = f"model {image.model!r} returned image bytes; deferrable mode needs a model that returns a URL"
            return TriggerEvent({"status": "error", "error": {"type": "InvalidInputError", "message": message}})
        return TriggerEvent({"status": "success", "image": image.to_xcom()})


def refuse_bytes(model_inputs: Any) -> None:
    """
    Refuse ``model_inputs`` holding bytes: a trigger's kwargs are stored as JSON, which cannot carry them.

    :raises InvalidInputError: naming the field.
    """
    if not isinstance(model_inputs, dict):
        return  # anything else is refused by the hook's checks, naming the field
    for key, value in model_inputs.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(item, (bytes, bytearray, memoryview)) for item in items):
            raise InvalidInputError(
                f"Invalid model_inputs[{key!r}]: bytes (an image) cannot be stored with a deferred task; "
                "use deferrable=False for inputs that carry image bytes"
            )
