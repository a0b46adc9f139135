"""
Define the Airflow connection: its form, and the settings the hook reads from it.

The form is the one definition, read by every Airflow version; the settings are validated as untrusted input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# Only constants at import time: provider discovery imports this module (through get_provider_info) while
# :mod:`~airflow_provider_imagen.exceptions` may still be importing Airflow's exceptions, so the error types are
# imported where raised.
from airflow_provider_imagen.constants import CLOUDFLARE_MODEL_PREFIXES, MAX_MAX_RETRIES, MAX_REQUESTS_PER_MINUTE

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Mapping

    import httpx
    from airflow.sdk import Connection

    from airflow_provider_imagen._cloudflare.network import Network
    from airflow_provider_imagen.exceptions import ConnectionConfigError
    from airflow_provider_imagen.models import GatewayOptions

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_TIMEOUT = 180.0
DEFAULT_MAX_RETRIES = 3

#: How long AI Gateway keeps the answer a call's cache key names: long enough for a re-send to find it.
RESEND_CACHE_TTL = 600

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# --- The settings ---------------------------------------------------------------------------------------


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
    requests_per_minute: float | None = None
    #: The ``proxy`` extra (it may hold credentials: kept out of ``repr``); see ``_cloudflare/network.py``.
    proxy: str | None = field(default=None, repr=False)
    #: The ``ca_bundle`` extra: the PEM file TLS trusts instead of the default CAs.
    ca_bundle: str | None = None
    #: US dollars per image by model id (the ``prices`` extra), over the catalog's defaults: see ``prices.py``.
    prices: Mapping[str, float] = field(default_factory=dict, compare=False)
    _run_urls: dict[str, httpx.URL] = field(default_factory=dict, init=False, repr=False, compare=False)

    def masked(self) -> ConnectionSettings:
        """Return these settings, with the token and any proxy credentials registered with Airflow's log masker."""
        from airflow.sdk.log import mask_secret

        from airflow_provider_imagen._cloudflare.network import proxy_secrets

        mask_secret(self.api_token)
        for secret in proxy_secrets(self.proxy) + proxy_secrets(self.proxy_for(self.base_url)):
            mask_secret(secret)
        return self

    @property
    def network(self) -> Network:
        """The connection's proxy and CA bundle, as every client of it uses them."""
        from airflow_provider_imagen._cloudflare.network import Network

        return Network(self.proxy, self.ca_bundle)

    def proxy_for(self, url: str | httpx.URL) -> str | None:
        """Return the proxy a request to ``url`` goes through (``None``: direct): see ``_cloudflare/network.py``."""
        return self.network.proxy_for(url)

    def ssl_context(self) -> ssl.SSLContext:
        """Return the TLS context of every client: the ``ca_bundle`` extra's CAs, else the defaults; loaded once."""
        return self.network.ssl_context()

    def client_kwargs(self, timeout: float | None = None) -> dict[str, Any]:
        """``httpx.Client`` / ``AsyncClient`` arguments; ``timeout`` overrides the connection's."""
        import httpx

        seconds = timeout or self.timeout
        return {
            "base_url": self.base_url,
            "headers": {"Authorization": f"Bearer {self.api_token}", "User-Agent": "airflow-provider-imagen"},
            # Generation blocks until the image exists: a long read, a short connect.
            "timeout": httpx.Timeout(seconds, connect=min(10.0, seconds)),
            "follow_redirects": False,
        }

    def build_request(
        self,
        client: httpx.Client | httpx.AsyncClient,
        model: str,
        input: Mapping[str, Any],
        options: GatewayOptions | None,
    ) -> httpx.Request:
        """
        Build the POST that runs ``model``: its route, body, and AI Gateway headers.

        Unless ``options`` name a ``cache_key`` or ``skip_cache``, it carries a fresh cache key, the same for every
        attempt of this call, so that a re-send after a lost answer gets the cached answer instead of a second
        generation. A model that takes a multipart form (:func:`~airflow_provider_imagen._cloudflare.catalog.body_form`)
        gets ``input`` as form fields, bytes as files; every other model, JSON.
        """
        import uuid

        from airflow_provider_imagen._cloudflare import catalog
        from airflow_provider_imagen._cloudflare.catalog_inputs import multipart_fields
        from airflow_provider_imagen._cloudflare.rules import returns_bytes

        url = self.run_url(model)  # checks the model id
        headers = {"cf-aig-gateway-id": self.gateway_id} if self.gateway_id else {}
        if options is not None:
            headers.update(options.to_headers())
        if options is None or (options.cache_key is None and not options.skip_cache):
            headers["cf-aig-cache-key"] = f"airflow-imagen-{uuid.uuid4().hex}"
            headers.setdefault("cf-aig-cache-ttl", str(RESEND_CACHE_TTL))
        if catalog.body_form(model) == "multipart":
            # FLUX.2 takes a form even for a prompt alone; httpx sets the Content-Type with its boundary.
            return client.build_request("POST", url, files=multipart_fields(model, input), headers=headers)
        body = dict(input) if returns_bytes(model) else {"model": model, "input": dict(input)}
        return client.build_request("POST", url, json=body, headers=headers)

    @property
    def host(self) -> str:
        """The API's host and port, for messages: never the token, never the path."""
        rest = self.base_url.partition("://")[2]
        return rest.split("/", 1)[0]

    def run_url(self, model: str) -> httpx.URL:
        """
        Return the absolute URL ``model`` runs at.

        That is ``.../ai/run`` for third-party models (the model goes in the body), ``.../ai/run/{model}`` for
        Cloudflare's own.

        :raises InvalidInputError: when ``model`` is not a well-formed model id, so no input can move the
            token-carrying request to another route of the Cloudflare API.
        """
        url = self._run_urls.get(model)
        if url is None:
            import httpx

            from airflow_provider_imagen._cloudflare.rules import check_model_id
            from airflow_provider_imagen.exceptions import ConnectionConfigError

            check_model_id(model)
            # Built once per model: httpx parses a relative URL and joins it to the base on every request,
            # about 50 µs, a tenth of a call's CPU; an absolute URL object is taken as it is.
            run_path = f"/accounts/{self.account_id}/ai/run"
            path = f"{run_path}/{model}" if model.startswith(CLOUDFLARE_MODEL_PREFIXES) else run_path
            url = httpx.URL(self.base_url + path)
            # Defence in depth: whatever the model id, the request stays under this account's run route.
            base_path = httpx.URL(self.base_url).path.rstrip("/")
            if url.path != base_path + path:
                raise ConnectionConfigError(f"Connection {self.conn_id!r}: cannot build a run URL for {model!r}")
            self._run_urls[model] = url
        return url

    @classmethod
    def from_connection(cls, conn: Connection) -> ConnectionSettings:
        """
        Validate ``conn`` and read it.

        :raises ConnectionConfigError: naming the connection id and the missing or malformed field.
        """
        from airflow_provider_imagen.exceptions import ConnectionConfigError

        conn_id = conn.conn_id or "<unnamed>"
        extra = conn.extra_dejson or {}

        def get_extra(name: str) -> Any:
            value = extra.get(name)  # Airflow 3 saves the form's fields under their plain names
            return None if value == "" else value

        def fail(what: str) -> ConnectionConfigError:
            return ConnectionConfigError(f"Connection {conn_id!r}: {what}")

        # A token read from a file or a Kubernetes secret often ends in a newline: surrounding space is not the token's.
        token = (conn.password or "").strip()
        if not token:
            raise fail("the API token is missing: put it in the connection's password ('API Token') field")
        if any(ch.isspace() for ch in token) or not token.isprintable():
            raise fail("the API token holds spaces or control characters: paste the token alone")

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

        requests_per_minute = get_extra("requests_per_minute")
        if requests_per_minute is not None:
            problem = requests_per_minute_problem(requests_per_minute)
            if problem:
                raise fail(f"extra 'requests_per_minute' {problem}")
            requests_per_minute = float(requests_per_minute)

        from airflow_provider_imagen._cloudflare.prices import parse_prices

        try:
            prices = parse_prices(get_extra("prices"))
        except ValueError as err:
            raise fail(f"extra 'prices' {err}") from None

        from airflow_provider_imagen._cloudflare import network

        settings = cls(
            conn_id=conn_id,
            base_url=_base_url(conn, fail),
            account_id=account_id,
            api_token=token,
            gateway_id=str(gateway_id) if gateway_id else None,
            timeout=timeout,
            max_retries=max_retries,
            requests_per_minute=requests_per_minute,
            **network.read_extras(get_extra, fail),
            prices=prices,
        )
        network.check_route(settings.base_url, settings.network, fail)
        return settings


def requests_per_minute_problem(value: Any) -> str | None:
    """Say what is wrong with ``value`` as a number of requests a minute (a number or its text), if anything."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or number != number:  # not a number, or NaN
        return f"must be a number of requests a minute, got {value!r}"
    if not 0 < number <= MAX_REQUESTS_PER_MINUTE:
        return f"must be above 0 and at most {MAX_REQUESTS_PER_MINUTE:,}, got {value!r}"
    return None


def check_hook_arguments(timeout: Any, max_retries: Any, requests_per_minute: Any) -> None:
    """
    Check the hook's overrides of the connection's settings.

    :raises ConnectionConfigError: naming the argument and what is allowed.
    """
    from airflow_provider_imagen.exceptions import ConnectionConfigError

    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout <= 3600):
        raise ConnectionConfigError(f"timeout must be between 0 and 3600 seconds, got {timeout!r}")
    if max_retries is not None and not (isinstance(max_retries, int) and 0 <= max_retries <= MAX_MAX_RETRIES):
        raise ConnectionConfigError(f"max_retries must be 0..{MAX_MAX_RETRIES}, got {max_retries!r}")
    if requests_per_minute is not None:
        problem = requests_per_minute_problem(requests_per_minute)
        if problem or isinstance(requests_per_minute, str):
            raise ConnectionConfigError(f"requests_per_minute {problem or 'must be a number, not text'}")


async def aread_settings(
    conn_id: str,
    aget_connection: Callable[[str], Awaitable[Connection]],
    get_connection: Callable[[str], Connection],
) -> ConnectionSettings:
    """
    ``conn_id``'s settings, read without blocking the event loop, with the token masked in logs.

    ``airflow dags test`` runs triggers in-process, where the async lookup cannot reach connections stored
    in the metadata database; only there (its comms are in memory, so the sync lookup does not block) the
    sync lookup is used instead.
    """
    from airflow.providers.common.compat.sdk import AirflowNotFoundException

    try:
        conn = await aget_connection(conn_id)
    except AirflowNotFoundException:
        if not _in_process_comms():
            raise
        conn = get_connection(conn_id)
    return ConnectionSettings.from_connection(conn).masked()


def _in_process_comms() -> bool:
    """Tell whether this is ``dag.test()`` / ``airflow dags test``, whose in-memory comms have no async send."""
    from airflow.sdk.execution_time import task_runner

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return comms is not None and type(comms).__name__ == "InProcessSupervisorComms" and not hasattr(comms, "asend")


def _base_url(conn: Connection, fail: Any) -> str:
    import httpx

    host = (conn.host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "@" in host.split("?", 1)[0].split("#", 1)[0]:  # before any message quotes the host: it may hold a secret
        raise fail("host must not hold credentials: put the API token in the password field")
    if "://" not in host:
        # A URI connection (``cloudflare_workers_ai://...``) keeps the scheme in ``schema``; a bare host is
        # ambiguous, and guessing https for a local http server only surfaces later as a TLS error.
        if conn.schema not in ("http", "https"):
            raise fail(
                f"host {host!r} has no scheme: write the API base URL in full, such as {DEFAULT_BASE_URL} "
                "or http://127.0.0.1:8787/client/v4"
            )
        host = f"{conn.schema}://{host}"
    try:
        url = httpx.URL(host)
    except httpx.InvalidURL as exc:
        raise fail(f"host {host!r} is not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise fail(f"host must be an http(s) URL such as {DEFAULT_BASE_URL}, got {host!r}")
    if url.userinfo:
        raise fail("host must not hold credentials: put the API token in the password field")
    if url.scheme == "http" and not is_loopback(url.host):
        # Every request carries the API token: in clear, anyone on the path could read it.
        raise fail(
            f"host {host!r} is plain http, which would send the API token in clear: use https, or http only for "
            "a loopback address (127.0.0.1, ::1, localhost) such as the emulator"
        )
    if url.query or url.fragment:
        raise fail("host must be a plain base URL without a query or fragment (which may hold a secret)")
    if conn.port and url.port is None:
        url = url.copy_with(port=conn.port)
    return str(url).rstrip("/")


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` names this machine: ``localhost`` or a loopback address."""
    import ipaddress

    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
