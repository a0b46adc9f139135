"""
The HTTP transports, and the one place where httpx's failures become the provider's exceptions.

:class:`AiohttpTransport` sends a task's requests over aiohttp, behind httpx's API: httpcore costs about 2 ms of CPU
per request, aiohttp about a quarter of that, which is the difference between a 10,000-row dataset keeping up with
its concurrency or not (``benchmarks/dataset.py``). Its failures are mapped to httpx's, keeping what decides billing:
a request never sent (refused, connect timeout) apart from one whose answer was lost (reset, read timeout).
:class:`SpreadTransport` (httpcore) spreads concurrent requests over several small connection pools; it serves when a
proxy applies, and the triggerer's shared client. :func:`async_transport` picks one.

httpcore's pool does bookkeeping on every request and every response that is quadratic in the number of
connections it holds (encode/httpcore#1035, unfixed in httpcore 1.0.9). With 50 requests in flight over one
pool, a 1,000-image batch took 7.1 s where the latency allows 2.0 s; the same requests spread over five
pools of ten connections took 2.2 s (``benchmarks/run.py``). This transport keeps every pool small and
sends each request to the pool with the fewest requests in flight, adding a pool when all are busy.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ssl
from typing import TYPE_CHECKING

import httpx

from airflow_provider_imagen.exceptions import (
    CloudflareServerError,
    ConnectionConfigError,
    GenerationOutcomeUnknownError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import aiohttp

#: Requests in flight per pool before another pool is opened (and connections each pool keeps alive).
CONNECTIONS_PER_POOL = 10
#: At most this many pools: 1,000 connections in all, as many as the triggerer's deferred calls need.
MAX_POOLS = 100
#: Set in the event loop of a batch or a dataset: its clients use :class:`AiohttpTransport` where it applies.
AIOHTTP_WANTED: contextvars.ContextVar[bool] = contextvars.ContextVar("imagen_aiohttp_wanted", default=False)
#: Off: never :class:`AiohttpTransport` (benchmarks turn it off to measure httpcore's transport).
USE_AIOHTTP = True


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """Return the process's one TLS context: loading the CA bundle costs ~30 ms, and a context is safe to share."""
    # Loading the CA bundle takes ~30 ms; one context serves every pool (SSLContext is safe to share).
    return httpx.create_ssl_context()


class _CountedStream(httpx.AsyncByteStream):
    """A response body that tells its pool when it is closed, i.e. when the request stops being in flight."""

    def __init__(self, stream: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._done is not None:
                self._done()
                self._done = None


class SpreadTransport(httpx.AsyncBaseTransport):
    """
    Send each request through the least busy of up to ``max_pools`` small ``AsyncHTTPTransport`` pools.

    :param proxy: the proxy every pool goes through (``None``: direct). A transport given to
        ``httpx.AsyncClient`` replaces its own environment-proxy handling: pass the connection's
        (:meth:`~airflow_provider_imagen._cloudflare.network.Network.httpx_proxy`, which honours ``HTTPS_PROXY``).
    :param per_pool: requests in flight per pool before another pool is opened.
    :param max_pools: the most pools it opens; past that, requests queue in the least busy pool.
    :param verify: the TLS context (the connection's ``ca_bundle``); the process's shared default one if unset.
    """

    def __init__(
        self,
        proxy: httpx.Proxy | str | None = None,
        per_pool: int = CONNECTIONS_PER_POOL,
        max_pools: int = MAX_POOLS,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self._proxy = proxy
        self._verify = verify
        self._per_pool = per_pool
        self._max_pools = max_pools
        self._pools: list[httpx.AsyncHTTPTransport] = []
        self._in_flight: list[int] = []

    @property
    def pools(self) -> int:
        """How many pools it has opened so far."""
        return len(self._pools)

    @property
    def in_flight(self) -> int:
        """Requests sent whose response body is not closed yet."""
        return sum(self._in_flight)

    def _pick(self) -> int:
        if self._in_flight:
            index = min(range(len(self._in_flight)), key=self._in_flight.__getitem__)
            if self._in_flight[index] < self._per_pool or len(self._pools) >= self._max_pools:
                return index
        limits = httpx.Limits(max_connections=self._per_pool, max_keepalive_connections=self._per_pool)
        self._pools.append(
            httpx.AsyncHTTPTransport(verify=self._verify or shared_ssl_context(), limits=limits, proxy=self._proxy)
        )
        self._in_flight.append(0)
        return len(self._pools) - 1

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._pick()
        self._in_flight[index] += 1

        def done() -> None:
            self._in_flight[index] -= 1

        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            done()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CountedStream(response.stream, done)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _AiohttpStream(httpx.AsyncByteStream):
    """
    An aiohttp response body, its failures raised as httpx's.

    Read whole, as one chunk: the provider's calls read every answer whole (an API answer, or a model's image
    bytes), and one chunk saves the event loop a round of httpx's and aiohttp's iterators per piece received.
    """

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            body = await self._response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise aiohttp_error(exc) from exc
        if body:
            yield body

    async def aclose(self) -> None:
        self._response.release()  # back to the pool when read whole, else the connection is closed


class AiohttpTransport(httpx.AsyncBaseTransport):
    """
    Send requests over one aiohttp connection pool, made in the event loop of the first request.

    Requests go as httpx built them (headers, body, no redirects followed, bodies not decoded: httpx decodes them),
    with httpx's timeouts: connect, read, and pool (the wait for a connection).

    Direct only: :func:`async_transport` gives a client that a proxy applies to :class:`SpreadTransport` instead.

    :param verify: the TLS context (the connection's ``ca_bundle``); the process's shared default one if unset.
    :param limit: connections open at most; past that, requests wait for one (within the pool timeout).
    """

    def __init__(self, verify: ssl.SSLContext | None = None, limit: int = MAX_POOLS * CONNECTIONS_PER_POOL) -> None:
        self._ssl = verify or shared_ssl_context()
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl, keepalive_timeout=5.0)
        # No cookie jar (httpx keeps the client's cookies), no environment proxy (decided by the caller).
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = self._open()
        timeout = request.extensions.get("timeout", {})
        try:
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=await request.aread() or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    connect=timeout.get("pool"), sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise aiohttp_error(exc) from exc
        extensions = {"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()}
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_AiohttpStream(response),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


def without_cookies(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """
    Make ``client`` keep no cookies, and return it.

    httpx copies every answer's headers into a cookie jar: ~6% of a dataset row's CPU. Neither the API (a bearer
    token) nor an image URL (signed) needs a cookie.
    """
    client._cookies = _NoCookies()  # the public setter would copy the cookies into a plain jar
    return client


def aiohttp_error(exc: BaseException) -> httpx.TransportError:
    """
    Return the httpx error for what aiohttp raised, so that :func:`transport_error` decides as it does for httpcore.

    Refused or timed out while connecting: never sent. Reset, disconnected, timed out reading, a malformed answer:
    it may have been sent. A body cut short reads as h11's words for it: the answer had started.
    """
    import aiohttp

    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # a ServerTimeoutError too: first
        return httpx.ConnectTimeout(message)
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unresolved, TLS (its cause says so)
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(f"peer closed connection without sending complete message body ({message})")
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError(message)
    return httpx.RemoteProtocolError(message)  # disconnected before an answer, a malformed answer


def async_transport(
    proxy: httpx.Proxy | str | None = None, verify: ssl.SSLContext | None = None
) -> httpx.AsyncBaseTransport:
    """
    Return a task's async transport: :class:`AiohttpTransport` where wanted, else :class:`SpreadTransport`.

    Wanted: :data:`AIOHTTP_WANTED` is set in this context (a batch or a dataset sets it in its event loop), and no
    proxy applies. Elsewhere (a trigger, a single call, a test that mocks httpcore) the client stays on httpcore.

    :param proxy: the proxy that applies (the connection's, by :mod:`~airflow_provider_imagen._cloudflare.network`).
    :param verify: the TLS context (``None``: :func:`shared_ssl_context`).
    """
    if proxy is None and USE_AIOHTTP and AIOHTTP_WANTED.get():
        return AiohttpTransport(verify=verify)
    return SpreadTransport(proxy=proxy, verify=verify)


# --- Failures on the wire: httpx mapped to the provider's exceptions ------------------------------------

#: Never sent: no connection was made, so Cloudflare cannot have seen (or billed) the request.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)  # a refused CONNECT


def transport_error(exc: httpx.TransportError | httpx.DecodingError, host: str) -> Exception:
    """
    Return the provider's error for a request to ``host`` that got no usable HTTP answer, with its retry decision.

    :param exc: what httpx raised: no answer (a transport error), or an answer whose body could not be decoded.
    :param host: the API's host, named in the message.
    """
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.DecodingError):
        # The status line came, then a body no decoder could read (a corrupt gzip stream): the generation ran
        # and was billed. A lost answer like a cut body: re-sent only when the re-send is a cache hit.
        return GenerationOutcomeUnknownError(
            f"the answer from {host} could not be decoded ({detail}); the image may have been generated and billed",
            answer_started=True,
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ConnectionConfigError(f"the connection's host {host} is not usable: {detail}")
    if _caused_by_tls(exc):
        # A wrong scheme (https to an http server) or a TLS version or certificate the peer refuses: no retry
        # can mend it.
        return ConnectionConfigError(
            f"the TLS handshake with {host} failed ({detail}): check the scheme (http or https) and the "
            "host of the connection's API base URL"
        )
    if isinstance(exc, _NOT_SENT):
        return CloudflareServerError(f"could not reach {host}: {detail}", retryable=True)
    what = "timed out waiting for" if isinstance(exc, httpx.TimeoutException) else "lost"
    # h11's words when the status line and headers arrived and the body was then cut short.
    answer_started = isinstance(exc, httpx.RemoteProtocolError) and (
        "message body" in str(exc) or "chunked" in str(exc)
    )
    return GenerationOutcomeUnknownError(
        f"the request to {host} {what} its answer after it may have reached Cloudflare ({detail}); "
        "the image may have been generated and billed",
        answer_started=answer_started,
    )


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):  # httpx -> httpcore -> ssl: a short chain
        if seen is None:
            return False
        # A peer hanging up mid-handshake (EOF) can be load, not configuration: that one stays retryable.
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, (ssl.SSLZeroReturnError, ssl.SSLEOFError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
