"""The hook: the thin owner of the wire between an Airflow connection and Cloudflare Workers AI."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
from airflow.sdk import BaseHook

from airflow_provider_imagen._cloudflare import connection_form
from airflow_provider_imagen._cloudflare import transport as wire
from airflow_provider_imagen._cloudflare.batch import run_each
from airflow_provider_imagen._cloudflare.call import CallLimits, asend, send
from airflow_provider_imagen._cloudflare.clients import shared_async_clients
from airflow_provider_imagen._cloudflare.fallback import (
    ModelWalk,
    UnavailableModels,
    prepare_batch,
    prepare_call,
)
from airflow_provider_imagen._cloudflare.response import image_from_result
from airflow_provider_imagen._cloudflare.rules import model_chain
from airflow_provider_imagen._cloudflare.settings import ConnectionSettings, aread_settings, check_hook_arguments
from airflow_provider_imagen._cloudflare.verify import check_connection
from airflow_provider_imagen.constants import DEFAULT_CONN_ID, IMAGEN_4
from airflow_provider_imagen.exceptions import CloudflareWorkersAIError
from airflow_provider_imagen.models import GatewayOptions, GeneratedImage, ImagenInput, RunResult

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class CloudflareWorkersAIHook(BaseHook):
    """
    Call Cloudflare Workers AI models, Imagen 4 first among them.

    Its pooled ``httpx.Client`` and ``httpx.AsyncClient`` are made on first use; close them with :meth:`close`
    / :meth:`aclose`, or use the hook as a (async) context manager.

    :param cloudflare_conn_id: the Airflow connection: password the API token, extra ``account_id`` (required),
        ``gateway_id``, ``timeout``, ``max_retries``, ``requests_per_minute``; host an optional API base URL.
    :param timeout: seconds to wait for a response (overrides the connection's; default 180: Imagen is slow).
    :param max_retries: retries of transient failures (overrides the connection's; default 3). A request that
        may have reached Cloudflare is re-sent only when the re-send cannot be billed again (see
        :func:`~airflow_provider_imagen._cloudflare.retry.is_idempotent`).
    :param retry_backoff: seconds before the first retry; doubles each time, with jitter.
    :param max_retry_wait: the longest single wait between attempts. A ``Retry-After`` longer than this
        ends the retries instead of blocking the task for that long.
    :param requests_per_minute: the account's rate limit, if known (overrides the connection's): never exceeded.
        Either way the pace is learned from 429s, per account and process (see
        :mod:`~airflow_provider_imagen._cloudflare.pacing`).
    :param max_rate_limit_wait: seconds a call re-sends after its first refusal by a rate limit (unbilled
        refusals do not count against ``max_retries``).
    :param share_async_client: share the event loop's client and connection read with other hooks, as
        triggers do (see :mod:`~airflow_provider_imagen._cloudflare.clients`); :meth:`aclose` then gives the client back
        instead of closing it.
    """

    conn_name_attr = "cloudflare_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "cloudflare_workers_ai"
    hook_name = "Cloudflare Workers AI"

    def __init__(
        self,
        cloudflare_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_backoff: float = 1.0,
        max_retry_wait: float = 60.0,
        requests_per_minute: float | None = None,
        max_rate_limit_wait: float = 600.0,
        share_async_client: bool = False,
    ) -> None:
        super().__init__()
        check_hook_arguments(timeout, max_retries, requests_per_minute)
        self.cloudflare_conn_id = cloudflare_conn_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_retry_wait = max_retry_wait
        self.requests_per_minute = requests_per_minute
        self.max_rate_limit_wait = max_rate_limit_wait
        self.share_async_client = share_async_client
        self._settings: ConnectionSettings | None = None
        self._client: httpx.Client | None = None
        self._async_client: httpx.AsyncClient | None = None
        #: Models this hook found unavailable lately: its later calls skip them for a while
        #: (:mod:`~airflow_provider_imagen._cloudflare.fallback`).
        self.unavailable_models = UnavailableModels()
        #: What this hook logged about its calls' model inputs: a batch's prompts do not log it again.
        self._logged: set[str] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cloudflare_conn_id={self.cloudflare_conn_id!r})"

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Return the custom fields of the connection form, for Airflow 3.1 (3.2+ reads the provider info)."""
        return connection_form.connection_form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabelled, hidden and placeholder fields of the connection form, for Airflow 3.1."""
        return connection_form.ui_field_behaviour()

    @property
    def settings(self) -> ConnectionSettings:
        """The validated connection, read once (synchronously)."""
        if self._settings is None:
            self._settings = ConnectionSettings.from_connection(self.get_connection(self.cloudflare_conn_id)).masked()
        return self._settings

    async def aget_settings(self) -> ConnectionSettings:
        """Return the validated connection, read once without blocking the event loop."""
        if self._settings is None:
            if self.share_async_client:
                self._settings = await shared_async_clients.settings(self.cloudflare_conn_id, self._aread_settings)
            else:
                self._settings = await self._aread_settings()
        return self._settings

    async def _aread_settings(self) -> ConnectionSettings:
        return await aread_settings(self.cloudflare_conn_id, self.aget_connection, self.get_connection)

    def get_conn(self) -> httpx.Client:
        """Return the hook's pooled synchronous client, created on first use."""
        if self._client is None:
            # Routed per request: the proxy and CAs of the connection (``_cloudflare/network.py``), as every client.
            self._client = httpx.Client(
                transport=self.settings.network.transport(), **self.settings.client_kwargs(self.timeout)
            )
        return self._client

    async def aget_conn(self) -> httpx.AsyncClient:
        """Return the hook's pooled asynchronous client, created on first use."""
        if self._async_client is None:
            settings = await self.aget_settings()

            def make() -> httpx.AsyncClient:
                # The triggerer's shared client: many small pools instead of one big one; a batch's or a dataset's:
                # aiohttp unless a proxy applies. Why and by how much: airflow_provider_imagen._cloudflare.transport.
                # The proxy and CAs are every client's (airflow_provider_imagen._cloudflare.network).
                network = settings.network
                proxy, verify = network.httpx_proxy(settings.base_url), network.ssl_context()
                if self.share_async_client:
                    transport: httpx.AsyncBaseTransport = wire.SpreadTransport(proxy=proxy, verify=verify)
                else:
                    transport = wire.async_transport(proxy=proxy, verify=verify)
                client = httpx.AsyncClient(transport=transport, **settings.client_kwargs(self.timeout))
                return wire.without_cookies(client) if isinstance(transport, wire.AiohttpTransport) else client

            # Concurrent first calls all awaited the settings above: only the first one makes the client.
            if self._async_client is None:
                if self.share_async_client:
                    timeout = self.timeout or settings.timeout
                    fingerprint = (settings.base_url, settings.api_token, settings.network)
                    self._async_client = shared_async_clients.acquire(settings.conn_id, timeout, fingerprint, make)
                else:
                    self._async_client = make()
        return self._async_client

    def close(self) -> None:
        """Close the synchronous client, if one was made; the hook makes a new one if used again."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close the asynchronous client, or give it back when it is shared (``share_async_client``)."""
        client, self._async_client = self._async_client, None
        if client is not None:
            await (shared_async_clients.release(client) if self.share_async_client else client.aclose())

    def __enter__(self) -> CloudflareWorkersAIHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> CloudflareWorkersAIHook:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def run(
        self, model: str, input: Mapping[str, Any], *, gateway_options: GatewayOptions | dict[str, Any] | None = None
    ) -> RunResult:
        """
        Run any Workers AI model and return its parsed answer.

        The request's route, body and AI Gateway cache key are described at
        :meth:`~airflow_provider_imagen._cloudflare.settings.ConnectionSettings.build_request`; which failures are
        retried, at :mod:`~airflow_provider_imagen._cloudflare.retry`.

        :param model: the model id: ``vendor/model``, ``@cf/...`` or ``@hf/...``.
        :param input: the model's input object.
        :param gateway_options: AI Gateway options (:class:`~airflow_provider_imagen.models.GatewayOptions`
            or a dict of its fields), sent as ``cf-aig-*`` headers.
        :raises InvalidInputError: for a malformed model id or gateway option, before any request.
        :raises CloudflareWorkersAIError: (a subclass of it) once retries are spent or on a final error.
        """
        return self._run(model, input, GatewayOptions.parse(gateway_options))

    def _run(
        self, model: str, input: Mapping[str, Any], options: GatewayOptions | None, fallback_follows: bool = False
    ) -> RunResult:
        limits = self._limits()
        return send(
            self.get_conn(), self.settings, limits, model, input, options, self.log, fallback_follows=fallback_follows
        )

    async def arun(
        self, model: str, input: Mapping[str, Any], *, gateway_options: GatewayOptions | dict[str, Any] | None = None
    ) -> RunResult:
        """Do the same as :meth:`run`, without blocking the event loop."""
        return await self._arun(model, input, GatewayOptions.parse(gateway_options))

    async def _arun(
        self, model: str, input: Mapping[str, Any], options: GatewayOptions | None, fallback_follows: bool = False
    ) -> RunResult:
        settings, client = await self.aget_settings(), await self.aget_conn()
        limits = self._limits()
        return await asend(client, settings, limits, model, input, options, self.log, fallback_follows=fallback_follows)

    def generate_image(
        self,
        prompt: str,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        *,
        model: str = IMAGEN_4,
        fallback_models: Sequence[str] | None = None,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
        model_inputs: Mapping[str, Any] | None = None,
    ) -> GeneratedImage:
        """
        Generate one image.

        :param prompt: what to draw.
        :param aspect_ratio: ``1:1``, ``3:4``, ``4:3``, ``9:16`` or ``16:9``; some models take more (Nano Banana:
            ``2:3``, ``3:2``, ``4:5``, ``5:4``, ``21:9``; see ``docs/models.md``).
        :param person_generation: ``dont_allow``, ``allow_adult`` or ``allow_all``.
        :param model: the text-to-image model; Imagen 4 unless told otherwise.
        :param fallback_models: models to try in turn when the one before is unavailable once its retries are
            spent (see :mod:`~airflow_provider_imagen._cloudflare.fallback`); never after an input, credentials or
            unknown-outcome error.
        :param gateway_options: AI Gateway options, as for :meth:`run`.
        :param model_inputs: the model's own inputs, such as ``{"seed": 42, "steps": 4}``, checked against its
            schema in the catalog (``docs/models.md``) before any request; a fallback model that does not take one
            is sent the others (the log says which it left out).
        :return: the image: ``.url`` for Imagen, ``.data`` for models that return bytes; ``.model`` names the
            model that made it, ``.skipped_models`` those passed over and why.
        :raises InvalidInputError: before any request, naming the bad field and what is allowed.
        """
        chain = model_chain(model, fallback_models)
        image_input, bodies = prepare_call(
            prompt, aspect_ratio, person_generation, chain, model_inputs, self.log, self._logged
        )
        walk = self._walk(model, fallback_models, gateway_options)
        for candidate, options, last in walk.steps():
            try:
                result = self._run(candidate, bodies[candidate], options, not last)
                return walk.made(image_from_result(result, image_input, bodies[candidate]))
            except CloudflareWorkersAIError as err:
                walk.failed(candidate, err, last)  # re-raises unless the next model may make it
        raise AssertionError("unreachable: the chain's last model re-raises its error")

    async def agenerate_image(
        self,
        prompt: str,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        *,
        model: str = IMAGEN_4,
        fallback_models: Sequence[str] | None = None,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
        model_inputs: Mapping[str, Any] | None = None,
        fallback_follows: bool = False,
    ) -> GeneratedImage:
        """
        Do the same as :meth:`generate_image`, without blocking the event loop.

        :param fallback_follows: the caller tries more models if these are unavailable (a trigger, whose task
            goes on with models that answer in bytes): the last model's capacity is then spent with its retries.
        """
        chain = model_chain(model, fallback_models)
        prepared = prepare_call(prompt, aspect_ratio, person_generation, chain, model_inputs, self.log, self._logged)
        return await self._agenerate(*prepared, model, fallback_models, gateway_options, fallback_follows)

    async def _agenerate(
        self,
        image_input: ImagenInput,
        bodies: Mapping[str, Mapping[str, Any]],
        model: str,
        fallback_models: Sequence[str] | None,
        gateway_options: Any,
        fallback_follows: bool = False,
    ) -> GeneratedImage:
        walk = self._walk(model, fallback_models, gateway_options)
        for candidate, options, last in walk.steps():
            try:
                result = await self._arun(candidate, bodies[candidate], options, not last or fallback_follows)
                return walk.made(image_from_result(result, image_input, bodies[candidate]))
            except CloudflareWorkersAIError as err:
                walk.failed(candidate, err, last)
        raise AssertionError("unreachable: the chain's last model re-raises its error")

    async def agenerate_images(
        self,
        prompts: Sequence[str],
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        *,
        model: str = IMAGEN_4,
        fallback_models: Sequence[str] | None = None,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
        max_concurrency: int = 8,
        model_inputs: Mapping[str, Any] | None = None,
    ) -> list[GeneratedImage | CloudflareWorkersAIError]:
        """
        Generate one image per prompt, at most ``max_concurrency`` at a time, over one connection pool.

        Every prompt is validated before the first request. A failed generation does not stop the others:
        its place in the result holds the error, so results stay in prompt order.

        :param prompts: what to draw, one image each.
        :param aspect_ratio: shared by every image.
        :param person_generation: shared by every image.
        :param model: the text-to-image model.
        :param fallback_models: as for :meth:`generate_image`; once a model is found unavailable, the other
            prompts skip it for a minute.
        :param gateway_options: AI Gateway options, as for :meth:`run`; a ``cache_key`` given here would make
            every prompt share one cached answer, so it is refused.
        :param max_concurrency: how many requests may be in flight at once (1..1000).
        :param model_inputs: shared by every image, as for :meth:`generate_image`.
        :return: a :class:`GeneratedImage` or a :class:`CloudflareWorkersAIError` per prompt, in order.
        """
        chain = model_chain(model, fallback_models)
        inputs, options = ImagenInput.parse_batch(prompts, None, person_generation, gateway_options, max_concurrency)
        inputs, bodies = prepare_batch(inputs, aspect_ratio, chain, model_inputs, self.log, self._logged)

        async def one(index: int) -> GeneratedImage | CloudflareWorkersAIError:
            return await self._agenerate(inputs[index], bodies[index], model, fallback_models, options)

        return await run_each(list(range(len(inputs))), one, lambda _, err: err, max_concurrency)

    def generate_images(
        self,
        prompts: Sequence[str],
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        *,
        model: str = IMAGEN_4,
        fallback_models: Sequence[str] | None = None,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
        max_concurrency: int = 8,
        model_inputs: Mapping[str, Any] | None = None,
    ) -> list[GeneratedImage | CloudflareWorkersAIError]:
        """Do the same as :meth:`agenerate_images`, from synchronous code (runs its own event loop)."""
        # Read the connection here, synchronously: an async lookup cannot see a connection stored in the
        # metadata database when the task runs in-process (``airflow dags test``), a sync lookup always can.
        self.settings  # noqa: B018
        batch = self.agenerate_images(
            prompts,
            aspect_ratio,
            person_generation,
            model=model,
            fallback_models=fallback_models,
            gateway_options=gateway_options,
            max_concurrency=max_concurrency,
            model_inputs=model_inputs,
        )

        async def run_and_close() -> list[GeneratedImage | CloudflareWorkersAIError]:
            try:
                return await batch
            finally:
                await self.aclose()  # the client belongs to this loop, which ends here

        return asyncio.run(run_and_close())

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button: which kind of token it is, whether it is active, and whether it reaches Workers AI."""
        try:
            return check_connection(self.settings, self.get_conn())
        except Exception as err:  # the UI's Test button shows whatever went wrong, in words
            return False, f"Connection test failed: {err}"
        finally:
            self.close()

    def _walk(self, model: str, fallback_models: Sequence[str] | None, options: Any) -> ModelWalk:
        chain = model_chain(model, fallback_models)
        return ModelWalk(chain, GatewayOptions.parse(options), self.unavailable_models, self.log)

    def _limits(self) -> CallLimits:
        return CallLimits(
            max_retries=self.max_retries,
            retry_backoff=self.retry_backoff,
            max_retry_wait=self.max_retry_wait,
            requests_per_minute=self.requests_per_minute,
            max_rate_limit_wait=self.max_rate_limit_wait,
        )
