"""
The connection's network: which proxy each request goes through, and which certificate authorities TLS trusts.

Every client the provider makes asks here (the hook's sync client, the async pools, the image downloads), so they
all agree. A request to ``url`` goes:

1. direct when ``NO_PROXY`` (or ``no_proxy``) names its host (``*``, a domain and its subdomains, an IP address or
   network such as ``10.0.0.0/8``, each optionally with ``:port``);
2. direct when its host is this machine (``localhost``, 127.x, ::1) and the proxy is not: a remote proxy would
   reach its own loopback, not ours, and a plain-http request would carry the API token to it in clear;
3. through the connection's ``proxy`` extra, when set;
4. through the environment's proxy for its scheme (``HTTPS_PROXY`` or ``HTTP_PROXY``, lower case first, as
   :func:`urllib.request.getproxies_environment` reads them), else ``ALL_PROXY``;
5. direct.

An https target is tunnelled through the proxy (``CONNECT``): the proxy sees the host and port, never the
request, so the API token stays inside TLS. A proxy URL may hold credentials (``http://user:pass@host:port``): they
are sent to the proxy only (``Proxy-Authorization``), masked in logs, and never quoted in an error or a ``repr``.

TLS trusts the ``ca_bundle`` extra's certificates when it is set (instead of the default ones: a TLS-intercepting
company proxy or a private CA), else ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, else certifi's. The same trust applies
to an https proxy's own certificate. Loading a bundle costs ~30 ms of CPU: each file is loaded once per process
(again only when it changes on disk).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
import threading
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from airflow_provider_imagen._cloudflare.settings import is_loopback
from airflow_provider_imagen.exceptions import ConnectionConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

# --- Checking the extras ----------------------------------------------------------------------------------


def check_proxy(value: Any, what: str = "extra 'proxy'") -> str:
    """
    Return the proxy URL ``value`` names, checked: ``http(s)://[user:password@]host[:port]``.

    :param value: the extra's value (untrusted).
    :param what: how messages name it.
    :raises ConnectionConfigError: naming ``what`` and what is allowed, never quoting credentials.
    """
    allowed = (
        "an http(s) proxy URL such as http://proxy.example.com:3128 (credentials allowed: http://user:pass@host:port)"
    )
    if not isinstance(value, str) or not value.strip():
        raise ConnectionConfigError(f"{what} must be {allowed}")
    text = value.strip()
    if "://" not in text:  # as curl and httpx read HTTPS_PROXY=proxy:3128
        text = "http://" + text
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError):
        url = None
    if url is None or not 0 < (url.port or 80) < 65536:
        raise ConnectionConfigError(f"{what} is not a valid URL: it must be {allowed}")
    shown = redact(text)
    if url.scheme not in ("http", "https"):
        scheme = url.scheme if url.scheme.isalnum() else "?"  # never a piece of what may be credentials
        raise ConnectionConfigError(f"{what} has the scheme {scheme!r}: it must be {allowed}")
    if not url.host:
        raise ConnectionConfigError(f"{what} {shown!r} has no host: it must be {allowed}")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ConnectionConfigError(f"{what} {shown!r} must be a scheme, a host and a port, without a path or query")
    return text


def check_ca_bundle(value: Any, what: str = "extra 'ca_bundle'") -> str:
    """
    Return the absolute path ``value`` names, once it has loaded as a PEM bundle of CA certificates.

    :raises ConnectionConfigError: naming ``what``, when it is not an absolute path to a readable PEM file.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConnectionConfigError(f"{what} must be the absolute path of a PEM file of CA certificates")
    path = os.path.expanduser(value.strip())
    if not os.path.isabs(path):
        raise ConnectionConfigError(f"{what} must be an absolute path (the worker's directory varies), got {path!r}")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConnectionConfigError(f"{what} {path!r} is not a readable file on this machine")
    ssl_context(path)  # a file that is not PEM certificates fails now, not at the first request
    return path


def read_extras(get_extra: Callable[[str], Any], fail: Callable[[str], ConnectionConfigError]) -> dict[str, Any]:
    """
    Return the connection's checked ``proxy`` and ``ca_bundle`` extras, those that are set.

    :param get_extra: reads an extra by name (``None`` when unset).
    :param fail: makes the error for a message, naming the connection.
    """
    found: dict[str, Any] = {}
    for name, check in (("proxy", check_proxy), ("ca_bundle", check_ca_bundle)):
        value = get_extra(name)
        if value is not None:
            try:
                found[name] = check(value)
            except ConnectionConfigError as err:
                raise fail(str(err)) from None
    return found


def check_route(base_url: str, network: Network, fail: Callable[[str], ConnectionConfigError]) -> None:
    """Check the route to the API now (a malformed ``HTTPS_PROXY``, say), and note it for the image downloads."""
    try:
        network.proxy_for(base_url)
    except ConnectionConfigError as err:
        raise fail(str(err)) from None
    remember(base_url, network)


def redact(proxy: str) -> str:
    """Return ``proxy`` with any credentials replaced by ``***``, for messages."""
    scheme, sep, rest = proxy.partition("://")
    if not sep:
        scheme, rest = "", proxy
    if "@" in rest:  # up to the last "@": a password may hold an unescaped "/" or "@"
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def proxy_secrets(proxy: str | None) -> list[str]:
    """Return what in ``proxy`` is secret (its password and user info), for Airflow's log masker."""
    if not proxy or "@" not in proxy:
        return []
    userinfo = proxy.partition("://")[2].rpartition("@")[0]
    url = httpx.URL(proxy)
    return [secret for secret in {userinfo, url.password or ""} if len(secret) >= 3]


# --- Choosing the route -------------------------------------------------------------------------------------


def proxy_for(url: str | httpx.URL, proxy: str | None) -> str | None:
    """
    Return the proxy a request to ``url`` goes through (``None``: direct), by the rules of this module.

    :param url: the request's URL.
    :param proxy: the connection's ``proxy`` extra, checked, or ``None``.
    :raises ConnectionConfigError: when the environment names a proxy that is not an http(s) URL.
    """
    target = httpx.URL(url)
    host = target.host.lower().rstrip(".")
    port = target.port or (443 if target.scheme == "https" else 80)
    environment = urllib.request.getproxies_environment()
    if _no_proxy(environment.get("no", ""), host, port):
        return None
    if proxy is None:
        found = environment.get(target.scheme) or environment.get("all")
        if not found:
            return None
        names = f"{target.scheme.upper()}_PROXY or ALL_PROXY"
        proxy = check_proxy(found, f"the environment's proxy ({names}; NO_PROXY=* turns it off)")
    if is_loopback(host) and not is_loopback(httpx.URL(proxy).host):
        return None
    return proxy


def _no_proxy(value: str, host: str, port: int) -> bool:
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    for raw in value.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        entry = entry.partition("://")[2] or entry
        name, entry_port = _split_port(entry)
        if not name or (entry_port is not None and entry_port != port):
            continue
        try:
            network = ipaddress.ip_network(name, strict=False)
        except ValueError:
            domain = name.lstrip("*").lstrip(".").rstrip(".")
            if domain and (host == domain or host.endswith("." + domain)):
                return True
            continue
        if address is not None and address.version == network.version and address in network:
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1]:8080
        name, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        name, port = entry.split(":")
    else:  # a bare IPv6 address or network, or no port
        name, port = entry, ""
    return name, int(port) if port.isdigit() else None


# --- Trust --------------------------------------------------------------------------------------------------


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """
    Return the TLS context for ``ca_bundle`` (the process's shared default one for ``None``), loaded once.

    :raises ConnectionConfigError: when the bundle cannot be read or holds no PEM certificate.
    """
    from airflow_provider_imagen._cloudflare.transport import shared_ssl_context

    if ca_bundle is None:
        return shared_ssl_context()
    try:
        stat = os.stat(ca_bundle)
        return _load_bundle(ca_bundle, stat.st_mtime_ns, stat.st_size)
    except (OSError, ssl.SSLError) as exc:
        reason = "no PEM certificate in it" if isinstance(exc, ssl.SSLError) else type(exc).__name__
        raise ConnectionConfigError(f"extra 'ca_bundle' {ca_bundle!r} cannot be loaded ({reason})") from None


@functools.lru_cache(maxsize=8)
def _load_bundle(path: str, mtime_ns: int, size: int) -> ssl.SSLContext:
    # Keyed by the file's mtime and size too: a rotated bundle is loaded again, an unchanged one never.
    return ssl.create_default_context(cafile=path)


# --- The clients' settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    """
    A connection's ``proxy`` and ``ca_bundle``: the route and the trust of every request made for it.

    :param proxy: the checked ``proxy`` extra (credentials included, kept out of ``repr``), or ``None``.
    :param ca_bundle: the checked ``ca_bundle`` path, or ``None``.
    """

    proxy: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    def __repr__(self) -> str:
        proxy = redact(self.proxy) if self.proxy else None
        return f"Network(proxy={proxy!r}, ca_bundle={self.ca_bundle!r})"

    def proxy_for(self, url: str | httpx.URL) -> str | None:
        """Return the proxy a request to ``url`` goes through, or ``None`` for a direct one."""
        return proxy_for(url, self.proxy)

    def ssl_context(self) -> ssl.SSLContext:
        """Return the TLS context every client of this connection verifies with."""
        return ssl_context(self.ca_bundle)

    def httpx_proxy(self, url: str | httpx.URL) -> httpx.Proxy | None:
        """Return :meth:`proxy_for` as an ``httpx.Proxy`` whose own TLS (an https proxy) trusts the same CAs."""
        proxy = self.proxy_for(url)
        return None if proxy is None else _httpx_proxy(proxy, self.ssl_context())

    def transport(self, before_proxy: Callable[[httpx.URL], None] | None = None) -> RoutingTransport:
        """Return a sync transport that routes each request as :meth:`proxy_for` says; see :class:`RoutingTransport`."""
        return RoutingTransport(self, before_proxy)


def _httpx_proxy(proxy: str, context: ssl.SSLContext) -> httpx.Proxy:
    # httpcore refuses a TLS context for a plain-http proxy: only an https proxy has a certificate to check.
    return httpx.Proxy(proxy, ssl_context=context if proxy.startswith("https:") else None)


class RoutingTransport(httpx.BaseTransport):
    """
    Send each request direct or through the proxy its URL gets (:meth:`Network.proxy_for`), one pool per route.

    A client that follows redirects, or fetches images from several hosts, thus honours ``NO_PROXY`` per request.

    :param network: the connection's proxy and CA bundle.
    :param before_proxy: called with the URL before a request goes through a proxy; may raise to refuse it.
    """

    def __init__(self, network: Network, before_proxy: Callable[[httpx.URL], None] | None = None) -> None:
        self.network = network
        self._before_proxy = before_proxy
        self._pools: dict[str | None, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self.network.proxy_for(request.url)
        if proxy is not None and self._before_proxy is not None:
            self._before_proxy(request.url)
        with self._lock:
            pool = self._pools.get(proxy)
            if pool is None:
                context = self.network.ssl_context()
                route = None if proxy is None else _httpx_proxy(proxy, context)
                pool = self._pools[proxy] = httpx.HTTPTransport(verify=context, proxy=route)
        return pool.handle_request(request)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


# --- Image downloads: the network of the connection that named the image ------------------------------------

#: The network of the connection last read for each API host and port. An image URL comes with the API's host
#: (``api_host``) rather than the connection, and a task reads its connection before it downloads anything.
_by_api: dict[tuple[str, int], Network] = {}


def remember(base_url: str, network: Network) -> None:
    """Note ``network`` as the one of the API at ``base_url``, for the image downloads of its answers."""
    _by_api[_api_key(base_url)] = network


def for_api(api_host: str | None) -> Network:
    """
    Return the network of the connection last read for the API at ``api_host`` (``host:port``, as in ``_task``).

    Without one (no connection read in this process): the environment's proxies and the default CAs.
    """
    if api_host:
        found = _by_api.get(_api_key(f"//{api_host}"))
        if found is not None:
            return found
    return Network()


def _api_key(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    default = 80 if parts.scheme == "http" else 443
    try:
        port = parts.port or default
    except ValueError:
        port = default
    return (parts.hostname or "").lower().rstrip("."), port
