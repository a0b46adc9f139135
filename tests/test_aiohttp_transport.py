"""The aiohttp transport: the same answers, the same billing decisions on failure, the same guard on image URLs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest

from airflow_provider_imagen._cloudflare.transport import (
    AIOHTTP_WANTED,
    AiohttpTransport,
    SpreadTransport,
    async_transport,
    transport_error,
)
from airflow_provider_imagen._task.download import AsyncImageFetcher
from airflow_provider_imagen.exceptions import (
    CloudflareServerError,
    GenerationOutcomeUnknownError,
    ImageDownloadError,
)

PNG = bytes.fromhex("89504e470d0a1a0a0000000d494844520000000100000001080600000000")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    """Start a server on 127.0.0.1 that counts its connections; return it, its URL and the count."""
    connections: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await handler(reader, writer)

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))


async def post_through_aiohttp(url: str, timeout: float = 5.0) -> httpx.Response:
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=timeout) as client:
        return await client.post(url, json={"prompt": "a cat"})


def failure_of(handler: Handler, timeout: float = 5.0) -> tuple[Exception, int]:
    """POST to a server running ``handler``: return the provider's error for what failed, and the connections."""

    async def main() -> tuple[Exception, int]:
        server, url, connections = await serve(handler)
        async with server:
            with pytest.raises((httpx.TransportError, httpx.DecodingError)) as raised:
                await post_through_aiohttp(url, timeout)
            return transport_error(raised.value, "127.0.0.1"), len(connections)

    return asyncio.run(main())


def test_an_answer_comes_back_as_httpx_built_it(imagen_emulator):
    async def main() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=AiohttpTransport(), headers={"Authorization": f"Bearer {imagen_emulator.token}"}
        ) as client:
            return await client.post(
                f"{imagen_emulator.api_base}/accounts/a/ai/run",
                json={"model": "google/imagen-4", "input": {"prompt": "A lighthouse"}},
            )

    response = asyncio.run(main())
    assert response.status_code == 200
    assert response.json()["result"]["image"].startswith(imagen_emulator.url)
    assert imagen_emulator.api_requests == 1


def test_a_refused_connection_was_never_sent():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> Exception:
        with pytest.raises(httpx.ConnectError) as raised:
            await post_through_aiohttp(f"http://127.0.0.1:{port}/run")
        return transport_error(raised.value, "127.0.0.1")

    error = asyncio.run(main())
    assert isinstance(error, CloudflareServerError) and error.retryable
    assert not isinstance(error, GenerationOutcomeUnknownError)


def test_a_connection_reset_after_the_request_was_sent_may_have_been_billed():
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        writer.transport.abort()

    error, connections = failure_of(reset)
    assert connections == 1
    assert isinstance(error, GenerationOutcomeUnknownError)
    assert error.answer_started is False


def test_a_hang_up_without_an_answer_may_have_been_billed():
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    error, _ = failure_of(hang_up)
    assert isinstance(error, GenerationOutcomeUnknownError) and error.answer_started is False


def test_a_body_cut_short_had_started_its_answer():
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"res')
        await writer.drain()
        writer.close()

    error, _ = failure_of(cut)
    assert isinstance(error, GenerationOutcomeUnknownError) and error.answer_started is True


def test_no_answer_within_the_read_timeout_may_have_been_billed():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    error, _ = failure_of(silent, timeout=0.2)
    assert isinstance(error, GenerationOutcomeUnknownError)
    assert "timed out" in str(error)


def test_a_proxy_or_a_context_that_did_not_ask_keeps_httpcore(monkeypatch):
    assert isinstance(async_transport(), SpreadTransport)  # a trigger, a single call

    async def wanted() -> tuple[httpx.AsyncBaseTransport, httpx.AsyncBaseTransport]:
        AIOHTTP_WANTED.set(True)
        return async_transport(), async_transport(proxy="http://proxy.internal:3128")

    direct, proxied = asyncio.run(wanted())
    assert isinstance(direct, AiohttpTransport)
    assert isinstance(proxied, SpreadTransport)  # no request made: the proxy host is never resolved

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert AsyncImageFetcher.open(api_host=None) is None  # downloads go through the proxy-aware sync client


def test_the_image_guard_refuses_a_private_address_before_connecting(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def image(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(PNG) + PNG)
        await writer.drain()
        writer.close()

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # cloud metadata: the guard refuses it before any connection
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        AIOHTTP_WANTED.set(True)
        server, url, connections = await serve(image)
        hop, hop_url, _ = await serve(redirect)
        async with server, hop:
            # Not the API's host: a loopback address is refused, and nothing connects to it.
            anywhere = AsyncImageFetcher.open(api_host=None)
            assert anywhere is not None
            with pytest.raises(ImageDownloadError, match="not public"):
                await anywhere.fetch(f"{url}/a.png")
            await anywhere.aclose()
            assert connections == []
            # The API's own private host (the emulator's case) is allowed; a redirect off it is checked again.
            same = AsyncImageFetcher.open(api_host=url.removeprefix("http://"))
            assert same is not None
            assert await same.fetch(f"{url}/a.png") == (PNG, "image/png")
            await same.aclose()
            hopping = AsyncImageFetcher.open(api_host=hop_url.removeprefix("http://"))
            assert hopping is not None
            with pytest.raises(ImageDownloadError, match=r"169\.254\.169\.254"):
                await hopping.fetch(f"{hop_url}/a.png")
            await hopping.aclose()

    asyncio.run(main())


ANSWERS = {
    "/ok": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PNG) + PNG,
    "/signed%7E.png?sig=a%2Fb": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PNG) + PNG,  # as written
    "/hop": b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n",  # relative: joined to the URL
    "/loop": b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n",
    "/declared-big": b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n" + PNG,
    "/streamed-big": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + PNG * 40,  # no length: read to the end
    "/unavailable": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    "/missing": b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    "/page": b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n<html>hi</html>",
    "/cut": b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + PNG,  # the connection closes 470 bytes short
}


@pytest.mark.parametrize(
    ("path", "expected", "retryable"),
    [
        ("/ok", None, None),
        ("/hop", None, None),
        ("/signed%7E.png?sig=a%2Fb", None, None),
        ("/loop", "more than 5 redirects", False),
        ("/declared-big", "999,999 bytes, over the 1,000-byte cap", False),
        ("/streamed-big", "larger than the 1,000-byte cap", False),
        ("/unavailable", "HTTP 503", True),
        ("/missing", "HTTP 404", False),
        ("/page", "not a PNG, JPEG or WebP image", False),
        ("/cut", "downloading the image failed: ClientPayloadError", True),
    ],
)
def test_the_image_fetcher_follows_redirects_caps_the_body_and_says_what_a_retry_can_mend(path, expected, retryable):
    requests: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            head = await reader.readuntil(b"\r\n\r\n")
            requests.append(head)
            wanted = head.split(b" ")[1].decode()
            writer.write(ANSWERS[wanted])
            await writer.drain()
            if wanted in ("/streamed-big", "/cut"):
                break
        writer.close()

    async def main() -> tuple[bytes, str]:
        server, url, _ = await serve(answer)
        async with server:
            fetcher = AsyncImageFetcher.open(api_host=url.removeprefix("http://"))
            assert fetcher is not None
            try:
                return await fetcher.fetch(url + path, max_bytes=1000)
            finally:
                await fetcher.aclose()

    if expected is None:
        assert asyncio.run(main()) == (PNG, "image/png")
        final = "/ok" if path == "/hop" else path  # a signed URL's bytes as written, not re-quoted
        assert requests[-1].startswith(f"GET {final} ".encode())
    else:
        with pytest.raises(ImageDownloadError, match=expected) as caught:
            asyncio.run(main())
        assert caught.value.retryable is retryable
