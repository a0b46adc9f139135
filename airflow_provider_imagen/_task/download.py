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
from typing import Any
from urllib.parse import urlsplit

import httpx

from airflow_provider_imagen._cloudflare.network import for_api
from airflow_provider_imagen._cloudflare.response import sniff_image_type
from airflow_provider_imagen._cloudflare.transport import async_transport, without_cookies
from airflow_provider_imagen._task.egress import image_transport
from airflow_provider_imagen.constants import MAX_IMAGE_BYTES
from airflow_provider_imagen.exceptions import ImageDownloadError

DEFAULT_DOWNLOAD_TIMEOUT = 60.0
MAX_REDIRECTS = 5
CHUNK_SIZE = 256 * 1024
ALLOWED_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})


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


def async_image_client(api_host: str | None, timeout: float = DEFAULT_DOWNLOAD_TIMEOUT) -> httpx.AsyncClient | None:
    """
    Return an async client for the image downloads of one task, every hop checked by :func:`check_image_url`.

    ``None`` when the connection or the environment sets a proxy (``proxy``, ``HTTPS_PROXY``, ...): a URL's proxy
    is decided per host, which the synchronous client of :func:`download_to_file` does. Close it in the event loop
    that used it.

    :param api_host: the API's host, as for :func:`check_image_url`.
    :param timeout: seconds to wait for the image host.
    """
    network = for_api(api_host)  # the connection's proxy and CAs
    if network.proxy is not None or any(scheme != "no" for scheme in urllib.request.getproxies()):
        return None
    allowed = allowed_image_hosts()  # read once: Airflow's configuration costs ~0.3 ms a read

    passed: set[tuple[str, str, int | None]] = set()  # IP addresses judged already: the verdict cannot change

    async def guard(request: httpx.Request) -> None:
        url = request.url
        if (url.scheme, url.host, url.port) in passed:
            return
        try:  # an IP address needs no lookup; a name is resolved off the event loop, every time
            ipaddress.ip_address(url.host)
        except ValueError:
            await asyncio.to_thread(check_image_url, str(url), api_host, allowed)
            return
        check_image_url(str(url), api_host, allowed)
        passed.add((url.scheme, url.host, url.port))

    client = httpx.AsyncClient(
        transport=async_transport(verify=network.ssl_context()),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=timeout,
        event_hooks={"request": [guard]},
    )
    return without_cookies(client)


async def adownload(url: str, client: httpx.AsyncClient, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[bytes, str]:
    """
    Fetch ``url`` with ``client`` (from :func:`async_image_client`): return its bytes and sniffed media type.

    :param url: the image's URL.
    :param client: the client, whose hook checks every hop.
    :param max_bytes: refuse an image larger than this.
    :raises ImageDownloadError: as :func:`download_to_file` does.
    """
    if not isinstance(url, str):
        raise ImageDownloadError("refusing to download the image: its URL is not a string")
    body = bytearray()
    try:
        async with client.stream("GET", url) as response:
            _check_answer(response, max_bytes)
            async for chunk in response.aiter_bytes(CHUNK_SIZE):
                body += chunk
                if len(body) > max_bytes:
                    raise ImageDownloadError(f"the image is larger than the {max_bytes:,}-byte cap")
    except httpx.TooManyRedirects:
        raise ImageDownloadError(f"more than {MAX_REDIRECTS} redirects while downloading the image") from None
    except httpx.TransportError as exc:
        raise ImageDownloadError(f"downloading the image failed: {type(exc).__name__}: {exc}", retryable=True) from exc
    return bytes(body), _checked_type(bytes(body[:12]))


def _check_answer(response: httpx.Response, max_bytes: int) -> None:
    if response.status_code >= 400:
        raise ImageDownloadError(
            f"downloading the image failed with HTTP {response.status_code}",
            status_code=response.status_code,
            retryable=response.status_code >= 500 or response.status_code == 429,
        )
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ImageDownloadError(f"the image is {int(declared):,} bytes, over the {max_bytes:,}-byte cap")


def _receive(response: httpx.Response, destination: Any, max_bytes: int) -> str:
    _check_answer(response, max_bytes)
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
