"""The hook: an Airflow connection turned into pooled httpx clients that call Cloudflare Workers AI."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from airflow.sdk import BaseHook
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from airflow_provider_imagen.constants import CLOUDFLARE_MODEL_PREFIXES, DEFAULT_CONN_ID, IMAGE_SIZES, IMAGEN_4
from airflow_provider_imagen.errors import (
    CloudflareServerError,
    CloudflareWorkersAIError,
    ConnectionConfigError,
    ImageGenerationFailedError,
    InvalidInputError,
)
from airflow_provider_imagen.models import (
    GatewayOptions,
    GeneratedImage,
    ImagenInput,
    RunResult,
)
from airflow_provider_imagen.responses import decode_image_field, parse_response, sniff_image_type
from airflow_provider_imagen.transport import SpreadTransport, environment_proxy

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping

    from airflow.sdk import Connection

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_TIMEOUT = 180.0
DEFAULT_MAX_RETRIES = 3
MAX_MAX_RETRIES = 10
#: Seconds the triggers of one event loop reuse a connection one of them read. A changed connection
#: (a rotated token, say) reaches new triggers within this time.
SHARED_SETTINGS_SECONDS = 10.0

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MODEL_ID = re.compile(r"\S+")  # no spaces: it goes into a URL or a JSON field as it is


@dataclass(frozen=True)
class ConnectionSettings:
    """What the hook reads from an Airflow connection. The token is kept out of ``repr``."""

    conn_id: str
    base_url: str
    account_id: str
    api_token: str = field(repr=False)
    gateway_id: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    _run_urls: dict[str, httpx.URL] = field(default_factory=dict, init=False, repr=False, compare=False)

    def run_url(self, model: str) -> httpx.URL:
        """
        The absolute URL ``model`` runs at: ``.../ai/run`` for third-party models (the model goes in the
        body), ``.../ai/run/{model}`` for Cloudflare's own.
        """
        url = self._run_urls.get(model)
        if url is None:
            # Built once per model: httpx parses a relative URL and joins it to the base on every request,
            # about 50 µs, a tenth of a call's CPU; an absolute URL object is taken as it is.
            path = f"/accounts/{self.account_id}/ai/run"
            if model.startswith(CLOUDFLARE_MODEL_PREFIXES):
                path = f"{path}/{model}"
            url = self._run_urls[model] = httpx.URL(self.base_url + path)
        return url

    @classmethod
    def from_connection(cls, conn: Connection) -> ConnectionSettings:
        """
        Validate ``conn`` and read it.

        :raises ConnectionConfigError: naming the connection id and the missing or malformed field.
        """
        conn_id = conn.conn_id or "<unnamed>"
        extra = conn.extra_dejson or {}

        def get_extra(name: str) -> Any:
            # Airflow 3 saves form fields under plain names; older forms used a prefixed key.
            value = extra.get(name)
            if value in (None, ""):
                value = extra.get(f"extra__cloudflare_workers_ai__{name}")
            return None if value == "" else value

        def fail(what: str) -> ConnectionConfigError:
            return ConnectionConfigError(f"Connection {conn_id!r}: {what}")

        token = conn.password
        if not token:
            raise fail("the API token is missing: put it in the connection's password ('API Token') field")

        account_id = get_extra("account_id")
        if not account_id:
            raise fail("extra 'account_id' is missing: set it to your Cloudflare account id")
        account_id = str(account_id).strip()
        if not _SAFE_ID.match(account_id):
            raise fail("extra 'account_id' must be letters, digits, '-' or '_' (a Cloudflare account id)")

        gateway_id = get_extra("gateway_id")
        if gateway_id is not None and not _SAFE_ID.match(str(gateway_id)):
            raise fail("extra 'gateway_id' must be letters, digits, '-' or '_' (an AI Gateway id)")

        timeout = get_extra("timeout")
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise fail(f"extra 'timeout' must be a number of seconds, got {timeout!r}") from None
        if not 0 < timeout <= 3600:
            raise fail(f"extra 'timeout' must be between 0 and 3600 seconds, got {timeout}")

        max_retries = get_extra("max_retries")
        if max_retries is None:
            max_retries = DEFAULT_MAX_RETRIES
        if isinstance(max_retries, str) and max_retries.strip().isdigit():
            max_retries = int(max_retries)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int):
            raise fail(f"extra 'max_retries' must be a whole number, got {max_retries!r}")
        if not 0 <= max_retries <= MAX_MAX_RETRIES:
            raise fail(f"extra 'max_retries' must be between 0 and {MAX_MAX_RETRIES}, got {max_retries}")

        return cls(
            conn_id=conn_id,
            base_url=_base_url(conn, fail),
            account_id=account_id,
            api_token=token,
            gateway_id=str(gateway_id) if gateway_id else None,
            timeout=timeout,
            max_retries=max_retries,
        )


def _base_url(conn: Connection, fail: Any) -> str:
    host = (conn.host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        host = f"{conn.schema or 'https'}://{host}" if conn.schema in (None, "", "http", "https") else host
    try:
        url = httpx.URL(host)
    except httpx.InvalidURL as exc:
        raise fail(f"host {host!r} is not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise fail(f"host must be an http(s) URL such as {DEFAULT_BASE_URL}, got {host!r}")
    if conn.port and url.port is None:
        url = url.copy_with(port=conn.port)
    return str(url).rstrip("/")


class _SharedAsyncClients:
    """
    One ``httpx.AsyncClient`` per event loop and connection, shared by every hook that asks for it, and the
    connection's settings read once per :data:`SHARED_SETTINGS_SECONDS` in that loop.

    The triggerer runs hundreds of triggers in one event loop: sharing one client keeps the number of
    sockets and TLS sessions bounded instead of one pool per trigger, and sharing the read spares the
    triggerer one connection lookup (a round trip to its supervisor) per trigger.
    """

    def __init__(self) -> None:
        # Keyed by the loop itself: a client or a read belongs to the loop it was made in.
        self._clients: dict[tuple[asyncio.AbstractEventLoop, tuple[Any, ...]], httpx.AsyncClient] = {}
        self._settings: dict[tuple[asyncio.AbstractEventLoop, str], tuple[float, asyncio.Task[ConnectionSettings]]] = {}

    def _forget_closed_loops(self) -> None:
        # What belongs to a closed loop can no longer be used, and keeps the loop alive.
        for stale in [k for k in self._clients if k[0].is_closed()]:
            del self._clients[stale]
        for stale_key in [k for k in self._settings if k[0].is_closed()]:
            del self._settings[stale_key]

    def get(self, key: tuple[Any, ...], make: Callable[[], httpx.AsyncClient]) -> httpx.AsyncClient:
        self._forget_closed_loops()
        loop_key = (asyncio.get_running_loop(), key)
        client = self._clients.get(loop_key)
        if client is None or client.is_closed:
            client = self._clients[loop_key] = make()
        return client

    async def settings(
        self, conn_id: str, read: Callable[[], Coroutine[Any, Any, ConnectionSettings]]
    ) -> ConnectionSettings:
        """
        ``conn_id``'s settings: read by ``read()`` at most once per :data:`SHARED_SETTINGS_SECONDS` in this
        loop. Callers that ask while a read is under way wait for it instead of starting their own.
        A failed read is not kept, so the next caller reads again.
        """
        self._forget_closed_loops()
        loop = asyncio.get_running_loop()
        key = (loop, conn_id)
        entry = self._settings.get(key)
        if entry is None or loop.time() >= entry[0] or entry[1].cancelled():
            entry = self._settings[key] = (loop.time() + SHARED_SETTINGS_SECONDS, loop.create_task(read()))
        try:
            # Shielded: one caller being cancelled must not cancel the read the others wait for.
            return await asyncio.shield(entry[1])
        except Exception:
            if self._settings.get(key) is entry:
                del self._settings[key]
            raise

    async def aclose(self) -> None:
        """Close the shared clients of the running event loop (e.g. when a triggerer or a test winds down)."""
        loop = asyncio.get_running_loop()
        for key in [k for k in self._settings if k[0] is loop]:
            del self._settings[key]
        for client_key in [k for k in self._clients if k[0] is loop]:
            await self._clients.pop(client_key).aclose()

    def __len__(self) -> int:
        return len(self._clients)

    def connection_pools(self) -> int:
        """How many connection pools the shared clients hold in all (see :class:`SpreadTransport`)."""
        transports = (client._transport for client in self._clients.values())
        return sum(t.pools for t in transports if isinstance(t, SpreadTransport))


shared_async_clients = _SharedAsyncClients()


class CloudflareWorkersAIHook(BaseHook):
    """
    Call Cloudflare Workers AI models, Imagen 4 first among them.

    One pooled ``httpx.Client`` (and one ``httpx.AsyncClient`` for the async methods) is created on first
    use and reused for every call; close them with :meth:`close` / :meth:`aclose` or use the hook as a
    (async) context manager.

    :param cloudflare_conn_id: the Airflow connection: password is the API token, extra ``account_id``
        (required), ``gateway_id``, ``timeout`` and ``max_retries`` (optional), host an optional API base URL.
    :param timeout: seconds to wait for a response (overrides the connection's ``timeout``; default 180,
        as Imagen takes seconds to tens of seconds).
    :param max_retries: retries after the first attempt for transient failures (overrides the connection's
        ``max_retries``; default 3). Every attempt may be billed, so keep it small.
    :param retry_backoff: seconds before the first retry; doubles each time, with jitter.
    :param max_retry_wait: the longest single wait between attempts. A ``Retry-After`` longer than this
        ends the retries instead of blocking the task for that long.
    :param share_async_client: use one ``AsyncClient`` per event loop and connection, shared with other
        hooks (what triggers do), and the connection as read by any of them in the last
        :data:`SHARED_SETTINGS_SECONDS`; :meth:`aclose` then leaves the client open for the others.
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
        share_async_client: bool = False,
    ) -> None:
        super().__init__()
        if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout <= 3600):
            raise ConnectionConfigError(f"timeout must be between 0 and 3600 seconds, got {timeout!r}")
        if max_retries is not None and not (isinstance(max_retries, int) and 0 <= max_retries <= MAX_MAX_RETRIES):
            raise ConnectionConfigError(f"max_retries must be 0..{MAX_MAX_RETRIES}, got {max_retries!r}")
        self.cloudflare_conn_id = cloudflare_conn_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_retry_wait = max_retry_wait
        self.share_async_client = share_async_client
        self._settings: ConnectionSettings | None = None
        self._client: httpx.Client | None = None
        self._async_client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cloudflare_conn_id={self.cloudflare_conn_id!r})"

    # --- Connection form (Airflow 3.1; 3.2+ reads the same form from get_provider_info) ------------

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Custom fields of the connection form, for Airflow 3.1."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, StringField
        from wtforms.validators import Optional

        from airflow_provider_imagen.get_provider_info import CONN_FIELDS

        def text(name: str) -> Any:
            spec = CONN_FIELDS[name]
            return StringField(
                lazy_gettext(spec["label"]), widget=BS3TextFieldWidget(), description=spec["description"]
            )

        return {
            "account_id": text("account_id"),
            "gateway_id": text("gateway_id"),
            "timeout": text("timeout"),
            "max_retries": IntegerField(
                lazy_gettext(CONN_FIELDS["max_retries"]["label"]),
                validators=[Optional()],
                widget=BS3TextFieldWidget(),
                description=CONN_FIELDS["max_retries"]["description"],
            ),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabelled, hidden and placeholder fields of the connection form, for Airflow 3.1."""
        from airflow_provider_imagen.get_provider_info import UI_FIELD_BEHAVIOUR

        return {
            "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    # --- Connection -------------------------------------------------------------------------------

    @property
    def settings(self) -> ConnectionSettings:
        """The validated connection, read once (synchronously)."""
        if self._settings is None:
            self._settings = self._read_settings(self.get_connection(self.cloudflare_conn_id))
        return self._settings

    async def aget_settings(self) -> ConnectionSettings:
        """The validated connection, read once without blocking the event loop."""
        if self._settings is None:
            if self.share_async_client:
                self._settings = await shared_async_clients.settings(self.cloudflare_conn_id, self._aread_settings)
            else:
                self._settings = await self._aread_settings()
        return self._settings

    async def _aread_settings(self) -> ConnectionSettings:
        return self._read_settings(await self.aget_connection(self.cloudflare_conn_id))

    def _read_settings(self, conn: Connection) -> ConnectionSettings:
        settings = ConnectionSettings.from_connection(conn)
        _mask(settings.api_token)
        return settings

    def _client_kwargs(self, settings: ConnectionSettings) -> dict[str, Any]:
        timeout = self.timeout or settings.timeout
        return {
            "base_url": settings.base_url,
            "headers": {
                "Authorization": f"Bearer {settings.api_token}",
                "User-Agent": "airflow-provider-imagen",
            },
            # Generation blocks until the image exists: a long read, a short connect.
            "timeout": httpx.Timeout(timeout, connect=min(10.0, timeout)),
            "follow_redirects": False,
        }

    def get_conn(self) -> httpx.Client:
        """The hook's pooled synchronous client, created on first use."""
        if self._client is None:
            self._client = httpx.Client(**self._client_kwargs(self.settings))
        return self._client

    async def aget_conn(self) -> httpx.AsyncClient:
        """The hook's pooled asynchronous client, created on first use."""
        if self._async_client is None:
            settings = await self.aget_settings()

            def make() -> httpx.AsyncClient:
                # Many small pools instead of one big one: see transport.py for why and by how much.
                transport = SpreadTransport(proxy=environment_proxy(settings.base_url))
                return httpx.AsyncClient(transport=transport, **self._client_kwargs(settings))

            if self.share_async_client:
                key = (settings.base_url, settings.api_token, self.timeout or settings.timeout)
                return shared_async_clients.get(key, make)
            # Concurrent first calls all awaited the settings above: only the first one makes the client.
            if self._async_client is None:
                self._async_client = make()
        return self._async_client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None

    def __enter__(self) -> CloudflareWorkersAIHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> CloudflareWorkersAIHook:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- Calls ------------------------------------------------------------------------------------

    def run(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
    ) -> RunResult:
        """
        Run any Workers AI model and return its parsed answer.

        Third-party models (``google/imagen-4``) go to ``POST /accounts/{id}/ai/run`` with the model in the
        body; Cloudflare's own (``@cf/...``) to ``POST /accounts/{id}/ai/run/{model}`` with the input as body.

        :param model: the model id.
        :param input: the model's input object.
        :param gateway_options: AI Gateway options (:class:`~airflow_provider_imagen.models.GatewayOptions`
            or a dict of its fields), sent as ``cf-aig-*`` headers.
        :raises CloudflareWorkersAIError: (a subclass of it) once retries are spent or on a final error.
        """
        client = self.get_conn()
        request = self._build_request(client, self.settings, model, input, gateway_options)
        start = time.monotonic()
        attempt_number = 0
        try:
            for attempt in Retrying(**self._retry_policy(self.settings, model)):
                with attempt:
                    attempt_number = attempt.retry_state.attempt_number
                    result = parse_response(_send(client.send, request), model)
        except CloudflareWorkersAIError as err:
            _annotate(err, model, attempt_number)
            raise
        return _finish(result, attempt_number, start)

    async def arun(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
    ) -> RunResult:
        """The same as :meth:`run`, without blocking the event loop."""
        client = await self.aget_conn()
        settings = await self.aget_settings()
        request = self._build_request(client, settings, model, input, gateway_options)
        start = time.monotonic()
        attempt_number = 0
        try:
            async for attempt in AsyncRetrying(**self._retry_policy(settings, model)):
                with attempt:
                    attempt_number = attempt.retry_state.attempt_number
                    result = parse_response(await _asend(client.send, request), model)
        except CloudflareWorkersAIError as err:
            _annotate(err, model, attempt_number)
            raise
        return _finish(result, attempt_number, start)

    def generate_image(
        self,
        prompt: str,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        *,
        model: str = IMAGEN_4,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
    ) -> GeneratedImage:
        """
        Generate one image.

        :param prompt: what to draw.
        :param aspect_ratio: ``1:1``, ``3:4``, ``4:3``, ``9:16`` or ``16:9``.
        :param person_generation: ``dont_allow``, ``allow_adult`` or ``allow_all``.
        :param model: the text-to-image model; Imagen 4 unless told otherwise.
        :param gateway_options: AI Gateway options, as for :meth:`run`.
        :return: the image: ``.url`` for Imagen, ``.data`` for models that return bytes.
        :raises InvalidInputError: before any request, naming the bad field and what is allowed.
        """
        image_input, options = _prepare(prompt, aspect_ratio, person_generation, gateway_options)
        return _to_image(self.run(model, image_input.to_request(), gateway_options=options), image_input)

    async def agenerate_image(
        self,
        prompt: str,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        *,
        model: str = IMAGEN_4,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
    ) -> GeneratedImage:
        """The same as :meth:`generate_image`, without blocking the event loop."""
        image_input, options = _prepare(prompt, aspect_ratio, person_generation, gateway_options)
        result = await self.arun(model, image_input.to_request(), gateway_options=options)
        return _to_image(result, image_input)

    async def agenerate_images(
        self,
        prompts: Sequence[str],
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        *,
        model: str = IMAGEN_4,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
        max_concurrency: int = 8,
    ) -> list[GeneratedImage | CloudflareWorkersAIError]:
        """
        Generate one image per prompt, at most ``max_concurrency`` at a time, over one connection pool.

        Every prompt is validated before the first request. A failed generation does not stop the others:
        its place in the result holds the error, so results stay in prompt order.

        :param prompts: what to draw, one image each.
        :param aspect_ratio: shared by every image.
        :param person_generation: shared by every image.
        :param model: the text-to-image model.
        :param gateway_options: AI Gateway options, as for :meth:`run`.
        :param max_concurrency: how many requests may be in flight at once (1..1000).
        :return: a :class:`GeneratedImage` or a :class:`CloudflareWorkersAIError` per prompt, in order.
        """
        inputs, options = _prepare_many(prompts, aspect_ratio, person_generation, gateway_options, max_concurrency)
        gate = asyncio.Semaphore(max_concurrency)

        async def one(image_input: ImagenInput) -> GeneratedImage | CloudflareWorkersAIError:
            async with gate:
                try:
                    result = await self.arun(model, image_input.to_request(), gateway_options=options)
                    return _to_image(result, image_input)
                except CloudflareWorkersAIError as err:
                    return err

        return list(await asyncio.gather(*(one(image_input) for image_input in inputs)))

    def generate_images(
        self,
        prompts: Sequence[str],
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        *,
        model: str = IMAGEN_4,
        gateway_options: GatewayOptions | dict[str, Any] | None = None,
        max_concurrency: int = 8,
    ) -> list[GeneratedImage | CloudflareWorkersAIError]:
        """The same as :meth:`agenerate_images`, from synchronous code (runs its own event loop)."""

        async def run_all() -> list[GeneratedImage | CloudflareWorkersAIError]:
            try:
                return await self.agenerate_images(
                    prompts,
                    aspect_ratio,
                    person_generation,
                    model=model,
                    gateway_options=gateway_options,
                    max_concurrency=max_concurrency,
                )
            finally:
                await self.aclose()  # the client belongs to this loop, which ends here

        return asyncio.run(run_all())

    def test_connection(self) -> tuple[bool, str]:
        """Check the token with ``GET /accounts/{account_id}/tokens/verify`` (free, no model call)."""
        try:
            settings = self.settings
            response = _send(self.get_conn().get, f"/accounts/{settings.account_id}/tokens/verify")
            result = parse_response(response, "tokens/verify").result or {}
        except Exception as err:  # the UI's Test button shows whatever went wrong, in words
            return False, f"Connection test failed: {err}"
        finally:
            self.close()
        status = result.get("status")
        if status == "active":
            return True, f"Connection works: the API token is active for account {settings.account_id}."
        if status in ("expired", "disabled"):
            return False, f"The API token is {status}: create a new one in the Cloudflare dashboard."
        return False, f"The API token is not active (status {status!r})."

    # --- Shared by the sync and async paths ------------------------------------------------------

    def _build_request(
        self,
        client: httpx.Client | httpx.AsyncClient,
        settings: ConnectionSettings,
        model: str,
        input: Mapping[str, Any],
        gateway_options: GatewayOptions | dict[str, Any] | None,
    ) -> httpx.Request:
        if not isinstance(model, str) or not _MODEL_ID.fullmatch(model):
            raise InvalidInputError(f"model must be a Workers AI model id such as {IMAGEN_4!r}, got {model!r}")
        options = GatewayOptions.parse(gateway_options)
        headers = {"cf-aig-gateway-id": settings.gateway_id} if settings.gateway_id else {}
        if options is not None:
            headers.update(options.to_headers())
        url = settings.run_url(model)
        if model.startswith(CLOUDFLARE_MODEL_PREFIXES):
            return client.build_request("POST", url, json=dict(input), headers=headers)
        return client.build_request("POST", url, json={"model": model, "input": dict(input)}, headers=headers)

    def _retry_policy(self, settings: ConnectionSettings, model: str) -> dict[str, Any]:
        attempts = 1 + (settings.max_retries if self.max_retries is None else self.max_retries)
        backoff = wait_exponential_jitter(
            multiplier=self.retry_backoff, max=self.max_retry_wait, jitter=self.retry_backoff
        )
        max_wait = self.max_retry_wait

        def should_retry(exc: BaseException) -> bool:
            if not isinstance(exc, CloudflareWorkersAIError) or not exc.retryable:
                return False
            # A server asking for a longer pause than we allow: stop now rather than hold the slot.
            return exc.retry_after is None or exc.retry_after <= max_wait

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after", None)
            return float(retry_after) if retry_after is not None else float(backoff(state))

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            sleep = state.next_action.sleep if state.next_action else 0.0
            self.log.warning(
                "Cloudflare Workers AI call to %s failed on attempt %d of %d: %s; retrying in %.1f s",
                model,
                state.attempt_number,
                attempts,
                exc,
                sleep,
            )

        return {
            "stop": stop_after_attempt(attempts),
            "wait": wait,
            "retry": retry_if_exception(should_retry),
            "before_sleep": log_retry,
            "reraise": True,
        }


def _prepare(
    prompt: str,
    aspect_ratio: str | None,
    person_generation: str | None,
    gateway_options: GatewayOptions | dict[str, Any] | None,
) -> tuple[ImagenInput, GatewayOptions | None]:
    image_input = ImagenInput.parse(prompt=prompt, aspect_ratio=aspect_ratio, person_generation=person_generation)
    return image_input, GatewayOptions.parse(gateway_options)


def _prepare_many(
    prompts: Sequence[str],
    aspect_ratio: str | None,
    person_generation: str | None,
    gateway_options: GatewayOptions | dict[str, Any] | None,
    max_concurrency: int,
) -> tuple[list[ImagenInput], GatewayOptions | None]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise InvalidInputError(f"Invalid prompts: expected a non-empty list of strings, got {prompts!r:.80}")
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or not 1 <= max_concurrency <= 1000:
        raise InvalidInputError(
            f"Invalid max_concurrency: must be a whole number from 1 to 1000, got {max_concurrency!r}"
        )
    inputs, problems = [], []
    for index, prompt in enumerate(prompts):
        try:
            inputs.append(
                ImagenInput.parse(prompt=prompt, aspect_ratio=aspect_ratio, person_generation=person_generation)
            )
        except InvalidInputError as err:
            problems.append(f"prompts[{index}]: {err}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InvalidInputError(shown)
    return inputs, GatewayOptions.parse(gateway_options)


def _to_image(result: RunResult, image_input: ImagenInput) -> GeneratedImage:
    url: str | None = None
    data: bytes | None = result.content
    if data is None:
        url, data = decode_image_field((result.result or {}).get("image"))
    if url is None and data is None:
        error = ImageGenerationFailedError(
            "the model reported success but returned no image (expected result.image to be a URL or base64 image data)",
            status_code=200,
        )
        _annotate(error, result.model, result.attempts)
        raise error
    size = IMAGE_SIZES.get(image_input.aspect_ratio or "") if result.model == IMAGEN_4 else None
    return GeneratedImage(
        model=result.model,
        prompt=image_input.prompt,
        aspect_ratio=image_input.aspect_ratio,
        person_generation=image_input.person_generation,
        url=url,
        data=data,
        media_type=sniff_image_type(data) if data else None,
        width=size[0] if size else None,
        height=size[1] if size else None,
        key_source=(result.gateway_metadata or {}).get("keySource"),
        attempts=result.attempts,
        elapsed_seconds=result.elapsed_seconds,
    )


def _send(send: Any, *args: Any) -> httpx.Response:
    try:
        response: httpx.Response = send(*args)
    except httpx.TransportError as exc:
        raise _transport_error(exc) from exc
    return response


async def _asend(send: Any, *args: Any) -> httpx.Response:
    try:
        response: httpx.Response = await send(*args)
    except httpx.TransportError as exc:
        raise _transport_error(exc) from exc
    return response


def _transport_error(exc: httpx.TransportError) -> Exception:
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return ConnectionConfigError(f"the connection's host is not usable: {exc}")
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    detail = str(exc) or type(exc).__name__
    return CloudflareServerError(f"the request {what}: {type(exc).__name__}: {detail}", retryable=True)


def _finish(result: RunResult, attempts: int, start: float) -> RunResult:
    return result.model_copy(update={"attempts": attempts, "elapsed_seconds": time.monotonic() - start})


def _annotate(err: CloudflareWorkersAIError, model: str, attempts: int) -> None:
    err.model = model
    err.attempts = max(attempts, 1)


def _mask(secret: str) -> None:
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - very old task SDKs
        return
    mask_secret(secret)
