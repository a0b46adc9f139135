"""
The connection's network settings, shown on the wire: a forwarding proxy and a TLS front on 127.0.0.1, before the
emulator, count what goes through them. Also ``defer_timeout``, which bounds a deferral.

httpx does not exempt localhost from ``HTTP_PROXY``, and neither does the provider when the proxy is itself on
loopback: so an emulator on 127.0.0.1 with a proxy on 127.0.0.1 is an honest test of the environment's proxy.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import json
import logging
import math
import select
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock
from urllib.parse import urlsplit

import pytest
from airflow.sdk import DAG, task

from airflow_provider_imagen._cloudflare import network
from airflow_provider_imagen.exceptions import (
    CloudflareServerError,
    CloudflareWorkersAIError,
    ConnectionConfigError,
    ImageDownloadError,
    InvalidInputError,
)
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.operators import ImagenGenerateImageOperator
from tests.conftest import task_deferred_class

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
PASSWORD = "pr0xy-s3cret-pw"


# --- Fixtures: a forwarding proxy, a TLS front, a CA -------------------------------------------------------


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Proxy

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _authorized(self) -> bool:
        if self.server.credentials is None:
            return True
        given = self.headers.get("Proxy-Authorization", "")
        return given == "Basic " + base64.b64encode(self.server.credentials.encode()).decode()

    def _refuse(self) -> None:
        self.send_response(407, "Proxy Authentication Required")
        self.send_header("Proxy-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_CONNECT(self) -> None:
        self.server.seen.append(("CONNECT", self.path, dict(self.headers)))
        if not self._authorized():
            return self._refuse()
        host, port = self.path.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()

    def _forward(self) -> None:
        # An absolute-URI request (a forward proxy's), or an origin-form one (a TLS front's).
        parts = urlsplit(self.path)
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        if parts.scheme and not self._authorized():
            return self._refuse()
        target = self.server.upstream or (parts.hostname, parts.port or 80)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if not k.lower().startswith("proxy-")}
        if self.server.upstream:  # a TLS front: tell the app the scheme the client used
            headers["X-Forwarded-Proto"] = "https"
        upstream = http.client.HTTPConnection(*target, timeout=30)
        try:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            upstream.request(self.command, path or "/", body=body or None, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = _forward


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int] | None = None, credentials: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.credentials = credentials
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def api_calls(self) -> list[str]:
        return [line for method, line, _ in self.seen if "/ai/run" in line or method == "CONNECT"]

    def downloads(self) -> list[str]:
        return [line for method, line, _ in self.seen if method == "GET" and "/images/" in line]

    def __enter__(self) -> _Proxy:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _TLSFront(_Proxy):
    """An https server on 127.0.0.1 that passes each request on to the emulator."""

    def __init__(self, upstream: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(upstream)
        self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(autouse=True)
def _no_environment_proxy(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def proxy():
    with _Proxy() as server:
        yield server


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """A CA made here, its PEM file, and a server context for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def certificate(subject, issuer, key, signer, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_ext = [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
    ]
    ca_cert = certificate("imagen test CA", "imagen test CA", ca_key, ca_key, ca_ext)
    import ipaddress

    leaf_ext = [
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ]
    leaf = certificate("127.0.0.1", "imagen test CA", leaf_key, ca_key, leaf_ext)
    folder = tmp_path_factory.mktemp("ca")
    bundle = folder / "ca.pem"
    bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain = folder / "leaf.pem"
    chain.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(chain)
    return str(bundle), server_context


@pytest.fixture
def tls_front(imagen_emulator, ca):
    """The emulator behind https on 127.0.0.1, with a certificate only the test's CA vouches for."""
    emulator = urlsplit(imagen_emulator.url)
    with _TLSFront((emulator.hostname, emulator.port), ca[1]) as front:
        yield front


def connect(monkeypatch, imagen_emulator, host=None, **extra):
    """Point the default connection at the emulator (or ``host``), with these extras."""
    conn = json.loads(imagen_emulator.server.connection_json())
    conn["extra"].update(extra)
    if host is not None:
        conn["host"] = host
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", json.dumps(conn))


def generate_sync_and_async(**hook_kwargs):
    with CloudflareWorkersAIHook(retry_backoff=0.01, **hook_kwargs) as hook:
        sync = hook.generate_image("A lighthouse")

    async def run():
        async with CloudflareWorkersAIHook(retry_backoff=0.01, **hook_kwargs) as hook:
            return await hook.agenerate_image("A lighthouse")

    return sync, asyncio.run(run())


def run_operator(tmp_path, **kwargs):
    from datetime import datetime

    with DAG(dag_id="network", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenGenerateImageOperator(task_id="gen", prompt="A lighthouse", **kwargs)
    return op.execute({"ti": mock.Mock()})


# --- The proxy extra and the environment -----------------------------------------------------------------


def test_the_proxy_extra_carries_the_hook_calls_and_the_image_download(imagen_emulator, proxy, monkeypatch, tmp_path):
    connect(monkeypatch, imagen_emulator, proxy=proxy.url)
    generate_sync_and_async()
    assert len(proxy.api_calls()) == 2  # the sync call and the async one
    stored = run_operator(tmp_path, output_path=f"{tmp_path}/")
    assert stored.startswith(f"file://{tmp_path}/")
    assert len(proxy.api_calls()) == 3 and len(proxy.downloads()) == 1
    assert imagen_emulator.generations == 3


def test_a_dataset_run_downloads_each_row_through_the_proxy(imagen_emulator, proxy, monkeypatch, tmp_path):
    from datetime import datetime

    from airflow_provider_imagen.operators import ImagenDatasetOperator
    from tests.test_durable import FakeTaskStateStore, TaskInstance

    connect(monkeypatch, imagen_emulator, proxy=proxy.url)
    items = tmp_path / "products.jsonl"
    items.write_text("".join(json.dumps({"key": f"SKU-{n}", "prompt": f"Item {n}"}) + "\n" for n in range(3)))
    with DAG(dag_id="catalog", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenDatasetOperator(task_id="images", items=str(items), output_path=f"{tmp_path}/out/")
    ti = TaskInstance(dag_id="catalog", task_id="images", run_id="manual__1")
    summary = op.execute({"ti": ti, "task_state_store": FakeTaskStateStore()})
    assert summary["generated"] == 3
    assert (len(proxy.api_calls()), len(proxy.downloads())) == (3, 3)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_the_environment_proxy_is_honoured_and_no_proxy_bypasses_it(
    imagen_emulator, proxy, monkeypatch, tmp_path, variable
):
    monkeypatch.setenv(variable, proxy.url)
    generate_sync_and_async()
    run_operator(tmp_path, output_path=f"{tmp_path}/")
    assert (len(proxy.api_calls()), len(proxy.downloads())) == (3, 1)

    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.0/8")
    generate_sync_and_async()
    run_operator(tmp_path, output_path=f"{tmp_path}/")
    assert (len(proxy.api_calls()), len(proxy.downloads())) == (3, 1)  # nothing more went through it
    assert imagen_emulator.generations == 6


def test_no_proxy_excludes_a_host_from_the_proxy_extra_too(imagen_emulator, proxy, monkeypatch):
    connect(monkeypatch, imagen_emulator, proxy=proxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    generate_sync_and_async()
    assert proxy.seen == [] and imagen_emulator.generations == 2


def test_a_loopback_api_never_goes_through_a_remote_proxy(imagen_emulator, monkeypatch):
    # The remote proxy would reach its own 127.0.0.1, and the plain-http request would carry the token to it:
    # the emulator is reached directly (no name of proxy.example.com is ever resolved).
    connect(monkeypatch, imagen_emulator, proxy="http://proxy.example.com:3128")
    generate_sync_and_async()
    assert imagen_emulator.generations == 2


@pytest.mark.parametrize(
    ("no_proxy", "url", "bypassed"),
    [
        ("*", "https://api.cloudflare.com/x", True),
        ("cloudflare.com", "https://api.cloudflare.com/x", True),
        (".cloudflare.com", "https://cloudflare.com/x", True),
        ("*.cloudflare.com", "https://api.cloudflare.com/x", True),
        ("flare.com", "https://api.cloudflare.com/x", False),
        ("api.cloudflare.com:8443", "https://api.cloudflare.com/x", False),
        ("api.cloudflare.com:443", "https://api.cloudflare.com/x", True),
        ("10.0.0.0/8", "http://10.1.2.3/x", True),
        ("10.0.0.0/8", "http://11.1.2.3/x", False),
        ("::1", "http://[::1]:8080/x", True),
        ("[::1]:8080", "http://[::1]:8080/x", True),
        ("", "https://api.cloudflare.com/x", False),
    ],
)
def test_no_proxy_entries(monkeypatch, no_proxy, url, bypassed):
    monkeypatch.setenv("NO_PROXY", no_proxy)
    proxy_url = "http://127.0.0.1:3128"
    assert network.proxy_for(url, proxy_url) == (None if bypassed else proxy_url)


def test_the_extra_comes_before_the_environment_and_https_uses_https_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://env-https:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://env-http:3128")
    assert network.proxy_for("https://api.cloudflare.com/x", None) == "http://env-https:3128"
    assert network.proxy_for("http://images.example.com/x", None) == "http://env-http:3128"
    assert network.proxy_for("https://api.cloudflare.com/x", "http://extra:3128") == "http://extra:3128"


# --- Credentials, and refusals before any request ------------------------------------------------------


def test_proxy_credentials_reach_the_proxy_only_and_are_masked(imagen_emulator, monkeypatch, caplog, tmp_path):
    masked: list[str] = []
    monkeypatch.setattr("airflow.sdk.log.mask_secret", lambda secret, name=None: masked.append(secret))
    with _Proxy(credentials=f"user:{PASSWORD}") as proxy:
        connect(monkeypatch, imagen_emulator, proxy=f"http://user:{PASSWORD}@127.0.0.1:{proxy.server_address[1]}")
        caplog.set_level(logging.DEBUG)
        hook = CloudflareWorkersAIHook(retry_backoff=0.01)
        hook.generate_image("A lighthouse")
        run_operator(tmp_path, output_path=f"{tmp_path}/")
        assert (len(proxy.api_calls()), len(proxy.downloads())) == (2, 1)
        assert PASSWORD in masked
        settings = hook.settings
        for text in (repr(settings), repr(settings.network), repr(hook), caplog.text):
            assert PASSWORD not in text

        # A wrong password: the proxy refuses (407), and no message quotes either password.
        connect(monkeypatch, imagen_emulator, proxy=f"http://user:wrong-{PASSWORD}@{proxy.url[7:]}")
        with pytest.raises(CloudflareWorkersAIError) as refused:
            CloudflareWorkersAIHook(max_retries=0).generate_image("A lighthouse")
        assert "407" in str(refused.value) and PASSWORD not in str(refused.value)
    assert imagen_emulator.generations == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"proxy": "ftp://proxy.example.com:21"}, "extra 'proxy' has the scheme 'ftp'"),
        ({"proxy": "socks5://127.0.0.1:1080"}, "extra 'proxy' has the scheme 'socks5'"),
        ({"proxy": f"http://user:{PASSWORD}@proxy.example.com:3128/path"}, r"without a path"),
        ({"proxy": f"http://user:{PASSWORD}@proxy.example.com:99999"}, "extra 'proxy' is not a valid URL"),
        ({"proxy": "http://"}, "extra 'proxy'"),
        ({"proxy": 3128}, "extra 'proxy' must be an http"),
        ({"ca_bundle": "certs/ca.pem"}, "extra 'ca_bundle' must be an absolute path"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "extra 'ca_bundle' '/nonexistent/ca.pem' is not a readable file"),
        ({"ca_bundle": "/"}, "is not a readable file"),
    ],
)
def test_a_bad_proxy_or_ca_bundle_is_refused_naming_the_field_before_any_request(
    imagen_emulator, monkeypatch, extra, message
):
    connect(monkeypatch, imagen_emulator, **extra)
    with pytest.raises(ConnectionConfigError, match=message) as refused:
        CloudflareWorkersAIHook().generate_image("A lighthouse")
    assert "cloudflare_workers_ai_default" in str(refused.value) and PASSWORD not in str(refused.value)
    assert imagen_emulator.api_requests == 0


def test_messages_show_a_proxy_without_its_credentials():
    assert network.redact(f"http://user:{PASSWORD}@proxy:3128") == "http://***@proxy:3128"
    assert network.redact("http://user:pa/ss@word@proxy:3128") == "http://***@proxy:3128"
    assert "pa/ss" not in repr(network.Network("http://user:pa/ss@word@proxy:3128"))


def test_a_ca_bundle_without_certificates_and_a_bad_environment_proxy_are_refused(
    imagen_emulator, monkeypatch, tmp_path
):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    connect(monkeypatch, imagen_emulator, ca_bundle=str(not_pem))
    with pytest.raises(ConnectionConfigError, match=r"extra 'ca_bundle' .* cannot be loaded"):
        CloudflareWorkersAIHook().generate_image("A lighthouse")
    connect(monkeypatch, imagen_emulator)
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(ConnectionConfigError, match=r"environment's proxy \(HTTP_PROXY or ALL_PROXY"):
        CloudflareWorkersAIHook().generate_image("A lighthouse")
    assert imagen_emulator.api_requests == 0


# --- The image downloads' guard, through a proxy ---------------------------------------------------------


def test_private_and_unresolvable_image_hosts_are_refused_before_the_proxy(imagen_emulator, proxy, monkeypatch):
    from airflow_provider_imagen._task import egress
    from airflow_provider_imagen._task.download import api_authority, download_to_file

    connect(monkeypatch, imagen_emulator, proxy=proxy.url)
    hook = CloudflareWorkersAIHook()
    api_host = api_authority(hook.settings.base_url)  # reading the connection notes its network
    with pytest.raises(ImageDownloadError, match="address is not public"):
        download_to_file("http://10.1.2.3/image.png", mock.Mock(), api_host=api_host)

    def unresolvable(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(egress.socket, "getaddrinfo", unresolvable)
    monkeypatch.setattr("airflow_provider_imagen._task.download.socket.getaddrinfo", unresolvable)
    with pytest.raises(ImageDownloadError, match="through the proxy: this machine cannot resolve it"):
        download_to_file("http://wiki.corp/image.png", mock.Mock(), api_host=api_host)
    assert proxy.seen == []


# --- A private CA ------------------------------------------------------------------------------------------


def test_a_ca_bundle_makes_a_private_ca_trusted_and_only_with_it(imagen_emulator, tls_front, ca, monkeypatch, tmp_path):
    host = f"{tls_front.url}/client/v4"
    connect(monkeypatch, imagen_emulator, host=host)
    with pytest.raises(ConnectionConfigError, match="TLS handshake"):
        CloudflareWorkersAIHook(max_retries=0).generate_image("A lighthouse")
    assert imagen_emulator.api_requests == 0

    imagen_emulator.configure(public_url=tls_front.url)  # image URLs on the https front too
    connect(monkeypatch, imagen_emulator, host=host, ca_bundle=ca[0])
    generate_sync_and_async()
    assert run_operator(tmp_path, output_path=f"{tmp_path}/").startswith("file://")
    assert imagen_emulator.generations == 3
    assert sum("/images/" in line for _, line, _ in tls_front.seen) == 1  # the download, over TLS


def test_an_https_api_is_tunnelled_so_the_proxy_never_sees_the_token(imagen_emulator, tls_front, ca, monkeypatch):
    with _Proxy(credentials=f"user:{PASSWORD}") as proxy:
        proxy_url = f"http://user:{PASSWORD}@127.0.0.1:{proxy.server_address[1]}"
        connect(monkeypatch, imagen_emulator, host=f"{tls_front.url}/client/v4", ca_bundle=ca[0], proxy=proxy_url)
        generate_sync_and_async()
        assert [method for method, _, _ in proxy.seen] == ["CONNECT", "CONNECT"]
        for _, line, headers in proxy.seen:
            assert imagen_emulator.token not in line + json.dumps(headers)
            assert "authorization" not in {key.lower() for key in headers}
    assert imagen_emulator.generations == 2

    # A refused CONNECT never reached Cloudflare: retried as unsent, and its message holds no password.
    with _Proxy(credentials="user:other") as proxy:
        proxy_url = f"http://user:{PASSWORD}@127.0.0.1:{proxy.server_address[1]}"
        connect(monkeypatch, imagen_emulator, host=f"{tls_front.url}/client/v4", ca_bundle=ca[0], proxy=proxy_url)
        with pytest.raises(CloudflareServerError, match="could not reach") as refused:
            CloudflareWorkersAIHook(max_retries=1, retry_backoff=0.01).generate_image("A lighthouse")
        assert PASSWORD not in str(refused.value) and len(proxy.seen) == 2
    assert imagen_emulator.generations == 2


def test_a_bundle_is_loaded_once_per_process(ca):
    assert network.ssl_context(ca[0]) is network.ssl_context(ca[0])
    assert network.ssl_context(None) is network.ssl_context(None)


# --- defer_timeout ---------------------------------------------------------------------------------------


def _deferral_timeout(imagen_emulator, **kwargs):
    TaskDeferred = task_deferred_class()
    from datetime import datetime

    with DAG(dag_id="network", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenGenerateImageOperator(task_id="gen", prompt="A lighthouse", deferrable=True, **kwargs)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": mock.Mock()})
    return deferred.value.timeout


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, dt.timedelta(hours=1)),
        ({"execution_timeout": dt.timedelta(minutes=20)}, dt.timedelta(minutes=20)),
        ({"defer_timeout": 90}, dt.timedelta(seconds=90)),
        (
            {"defer_timeout": dt.timedelta(hours=3), "execution_timeout": dt.timedelta(minutes=20)},
            dt.timedelta(hours=3),
        ),
    ],
)
def test_defer_timeout_reaches_the_deferral(imagen_emulator, kwargs, expected):
    assert _deferral_timeout(imagen_emulator, **kwargs) == expected
    assert imagen_emulator.api_requests == 0


@pytest.mark.parametrize("value", [0, -5, math.nan, math.inf, "60", True, dt.timedelta(0), 1e300])
def test_a_bad_defer_timeout_fails_when_the_dag_is_parsed(value):
    from datetime import datetime

    with (
        DAG(dag_id="network", schedule=None, start_date=datetime(2025, 1, 1)),
        pytest.raises(InvalidInputError, match="defer_timeout"),
    ):
        ImagenGenerateImageOperator(task_id="gen", prompt="A lighthouse", defer_timeout=value)


def test_the_decorator_passes_defer_timeout_through(imagen_emulator):
    TaskDeferred = task_deferred_class()
    from datetime import datetime

    with DAG(dag_id="network", schedule=None, start_date=datetime(2025, 1, 1)):

        @task.imagen(deferrable=True, defer_timeout=dt.timedelta(minutes=5))
        def draw() -> str:
            return "A lighthouse"

        op = draw().operator
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": mock.Mock(), "params": {}})
    assert deferred.value.timeout == dt.timedelta(minutes=5)
