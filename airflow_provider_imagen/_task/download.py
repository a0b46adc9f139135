"""
Fetching a generated image from the URL an answer named: streamed, capped, sniffed, and never from inside.

The URL comes from an API answer (or a durable record written by an earlier try): untrusted. Before every
request, the first and each redirect hop, its host is resolved and refused when any of its addresses is not
a public one (loopback, link-local such as cloud metadata at 169.254.169.254, private ranges, shared, multicast,
reserved, unspecified), unless the API itself is on such an address and the image is on that same host (the
emulator, a private proxy), or the host is listed in ``[imagen] allowed_image_hosts``. A host that does not
resolve reaches nothing and is left to fail on its own. A DNS answer that changes between this check and the
connection (rebinding) is not caught here: an egress policy is the place for that.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx

from airflow_provider_imagen._cloudflare.network import for_api
from airflow_provider_imagen._cloudflare.response import sniff_image_type
from airflow_provider_imagen._cloudflare.transport import CONNECTIONS_PER_POOL, MAX_POOLS
from airflow_provider_imagen._task.egress import image_transport
from airflow_provider_imagen.constants import MAX_IMAGE_BYTES
from airflow_provider_imagen.exceptions import ImageDownloadError

if TYPE_CHECKING:
    import ssl

    import aiohttp

DEFAULT_DOWNLOAD_TIMEOUT = 60.0
MAX_REDIRECTS = 5
CHUNK_SIZE = 256 * 1024
ALLOWED_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def api_authority(base_url: str) -> str:
    """Return the API base URL's ``host:port`` (the scheme's default port when none is written)."""
    url = httpx.URL(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"[{url.host}]:{port}" if ":" in url.host else f"{url.host}:{port}"


def allowed_image_hosts() -> frozenset[str]:
    """Return the hosts an admin allowed images from whatever their address: ``[imagen] allowed_image_hosts``."""
    from airflow.providers.common.compat.sdk import conf

    value = conf.get("imagen", "allowed_image_hosts", fallback="") or ""
    return frozenset(host.strip().lower().rstrip(".") for host in value.split(",") if host.strip())


def _is_inside(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address):  # IPv4 inside IPv6 (mapped, 6to4) is judged as that IPv4 address
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def _is_the_api(host: str, port: int, api_host: str | None) -> bool:
    # "host:port" (as the operators pass it) must match both: a redirect to another port of a private API host
    # (a database beside the emulator, say) is not the API.
    if not api_host:
        return False
    api = urlsplit(f"//{api_host}")
    if (api.hostname or "").lower().rstrip(".") != host:
        return False
    return api.port is None or api.port == port


def _addresses(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    try:
        return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError):
        return []  # does not resolve: there is nothing to reach


def check_image_url(url: str, api_host: str | None = None, allowed: frozenset[str] | None = None) -> None:
    """
    Refuse an image URL that is not http(s), or whose host resolves to an address inside a private network.

    :param url: the image's URL, or a redirect's target.
    :param api_host: the API's ``host:port`` (or bare host); an image there may be private when the API is.
    :param allowed: :func:`allowed_image_hosts`, when the caller read it already.
    :raises ImageDownloadError: naming the host and why, before any connection to it.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImageDownloadError("refusing to download the image: only http(s) URLs with a host are followed")
    host = parts.hostname.lower().rstrip(".")
    if host in (allowed_image_hosts() if allowed is None else allowed):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    inside = [address for address in _addresses(host, port) if _is_inside(address)]
    if not inside:
        return
    if _is_the_api(host, port, api_host) and all(map(_is_inside, _addresses(host, port))):
        return  # the API itself is on this private host and port (the emulator, a private proxy)
    raise ImageDownloadError(
        f"refusing to download the image from {host} ({inside[0]}): the address is not public (loopback, "
        "link-local, private, multicast or reserved); list the host in [imagen] allowed_image_hosts to allow it"
    )


def download_to_file(
    url: str,
    destination: Any,
    *,
    client: httpx.Client | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    api_host: str | None = None,
) -> str:
    """
    Stream ``url`` into the open binary file ``destination`` and return the sniffed media type.

    No Cloudflare token is sent: the image host is not the API. Every hop is checked by :func:`check_image_url`.

    :param url: the image's URL.
    :param destination: an open binary file.
    :param client: the client to send with (tests); the URL and each redirect are still checked.
    :param max_bytes: refuse an image larger than this.
    :param timeout: seconds to wait for the image host.
    :param api_host: the API's host, as for :func:`check_image_url`.
    :raises ImageDownloadError: for a refused destination, an error status, an oversized or non-image body.
    """
    if not isinstance(url, str):
        raise ImageDownloadError("refusing to download the image: its URL is not a string")

    def guard(request: httpx.Request) -> None:
        check_image_url(str(request.url), api_host)

    own_client = client is None
    # The connection's proxy and CAs (one TLS context for every download: loading CAs costs ~35 ms of CPU each).
    http = client or httpx.Client(
        follow_redirects=True, max_redirects=MAX_REDIRECTS, timeout=timeout, transport=image_transport(api_host)
    )
    http.event_hooks["request"] = [*http.event_hooks["request"], guard]  # every hop, redirects included
    try:
        with http.stream("GET", url) as response:
            return _receive(response, destination, max_bytes)
    except httpx.TooManyRedirects:
        raise ImageDownloadError(f"more than {MAX_REDIRECTS} redirects while downloading the image") from None
    except httpx.TransportError as exc:
        raise ImageDownloadError(f"downloading the image failed: {type(exc).__name__}: {exc}", retryable=True) from exc
    finally:
        if own_client:
            http.close()
        else:
            http.event_hooks["request"] = [hook for hook in http.event_hooks["request"] if hook is not guard]


class AsyncImageFetcher:
    """
    Fetch the images of one event loop over one aiohttp pool, every hop checked by :func:`check_image_url`.

    A dataset fetches an image a row in its event loop, where CPU is what limits it: aiohttp alone costs about half
    of what an httpx client over :class:`~airflow_provider_imagen._cloudflare.transport.AiohttpTransport` does
    (``benchmarks/dataset.py``). Redirects are followed here, so that each hop is checked before it is connected to.
    Make it with :meth:`open`; close it in the event loop that used it.

    :param api_host: the API's host, as for :func:`check_image_url`.
    :param context: the TLS context (the connection's ``ca_bundle``).
    :param allowed: :func:`allowed_image_hosts`.
    :param timeout: seconds to wait for the image host: to connect, and between two reads.
    """

    def __init__(self, api_host: str | None, context: ssl.SSLContext, allowed: frozenset[str], timeout: float) -> None:
        self._api_host = api_host
        self._context = context
        self._allowed = allowed
        self._timeout = timeout
        self._passed: set[tuple[str, str, int | None]] = set()  # IP addresses judged already: it cannot change
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def open(cls, api_host: str | None, timeout: float = DEFAULT_DOWNLOAD_TIMEOUT) -> AsyncImageFetcher | None:
        """
        Return a fetcher for the images of the API at ``api_host``; ``None`` when a proxy applies.

        A URL's proxy is decided per host, which the synchronous client of :func:`download_to_file` does.
        """
        network = for_api(api_host)  # the connection's proxy and CAs
        if network.proxy is not None or any(scheme != "no" for scheme in urllib.request.getproxies()):
            return None
        # Read once: Airflow's configuration costs ~0.3 ms a read.
        return cls(api_host, network.ssl_context(), allowed_image_hosts(), timeout)

    async def _check(self, url: str) -> None:
        parts = urlsplit(url)
        key = (parts.scheme, (parts.hostname or "").lower(), parts.port)
        if key in self._passed:
            return
        try:  # an IP address needs no lookup; a name is resolved off the event loop, every time
            ipaddress.ip_address(key[1])
        except ValueError:
            await asyncio.to_thread(check_image_url, url, self._api_host, self._allowed)
            return
        check_image_url(url, self._api_host, self._allowed)
        self._passed.add(key)

    def _open_session(self) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=MAX_POOLS * CONNECTIONS_PER_POOL, ssl=self._context)
        # No cookies (a signed URL needs none), no environment proxy (open() found none applies).
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    async def fetch(self, url: str, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[bytes, str]:
        """
        Fetch ``url``: return its bytes and sniffed media type.

        No Cloudflare token is sent: the image host is not the API.

        :param url: the image's URL.
        :param max_bytes: refuse an image larger than this.
        :raises ImageDownloadError: as :func:`download_to_file` does.
        """
        import aiohttp
        import yarl

        if not isinstance(url, str):
            raise ImageDownloadError("refusing to download the image: its URL is not a string")
        if self._session is None or self._session.closed:
            self._session = self._open_session()
        # As httpx's timeout: a pooled connection (and the name's lookup), the connection, each read.
        seconds = self._timeout
        timeout = aiohttp.ClientTimeout(connect=seconds, sock_connect=seconds, sock_read=seconds)
        for _ in range(MAX_REDIRECTS + 1):
            await self._check(url)  # before each hop is connected to
            # Sent as written: re-quoting could change the bytes a signed URL's signature covers.
            target = yarl.URL(url, encoded=True)
            try:
                async with self._session.get(target, allow_redirects=False, timeout=timeout) as response:
                    location = response.headers.get("Location")
                    if response.status in _REDIRECTS and location:
                        url = urljoin(url, location)
                        continue
                    _check_answer(response.status, response.headers.get("Content-Length"), max_bytes)
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                        body += chunk
                        if len(body) > max_bytes:
                            raise ImageDownloadError(f"the image is larger than the {max_bytes:,}-byte cap")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise ImageDownloadError(f"downloading the image failed: {detail}", retryable=True) from exc
            return bytes(body), _checked_type(bytes(body[:12]))
        raise ImageDownloadError(f"more than {MAX_REDIRECTS} redirects while downloading the image")

    async def aclose(self) -> None:
        """Close the pool, in the event loop that used it."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _check_answer(status: int, declared: str | None, max_bytes: int) -> None:
    if status >= 400:
        raise ImageDownloadError(
            f"downloading the image failed with HTTP {status}",
            status_code=status,
            retryable=status >= 500 or status == 429,
        )
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ImageDownloadError(f"the image is {int(declared):,} bytes, over the {max_bytes:,}-byte cap")


def _receive(response: httpx.Response, destination: Any, max_bytes: int) -> str:
    _check_answer(response.status_code, response.headers.get("content-length"), max_bytes)
    media_type: str | None = None
    received = 0
    head = b""
    for chunk in response.iter_bytes(CHUNK_SIZE):
        received += len(chunk)
        if received > max_bytes:
            raise ImageDownloadError(f"the image is larger than the {max_bytes:,}-byte cap")
        if media_type is None:
            head += chunk
            if len(head) < 12:
                continue
            media_type = _checked_type(head)
            destination.write(head)
            continue
        destination.write(chunk)
    if media_type is None:
        media_type = _checked_type(head)
        destination.write(head)
    return media_type


def _checked_type(head: bytes) -> str:
    # The body's bytes are never echoed: an error page's content is not the log's business.
    media_type = sniff_image_type(head)
    if media_type not in ALLOWED_TYPES:
        raise ImageDownloadError("the downloaded body is empty or not a PNG, JPEG or WebP image")
    return media_type
