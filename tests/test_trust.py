"""
What an outside review found (issue 23): each test failed on the code before the fix.

Nothing here reaches an address off this machine: destinations that must be refused are refused before any
connection, and the ``no_connections_off_loopback`` fixture fails a test that would have connected anywhere else.
"""

from __future__ import annotations

import asyncio
import gzip
import http.server
import ipaddress
import json
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import respx
from airflow.providers.common.compat.sdk import AirflowFailException
from airflow.sdk import DAG

from airflow_provider_imagen._task.download import check_image_url
from airflow_provider_imagen._task.storage import store_image
from airflow_provider_imagen.exceptions import (
    CloudflareAuthenticationError,
    ConnectionConfigError,
    ContentPolicyError,
    GenerationOutcomeUnknownError,
    ImageDownloadError,
    InvalidInputError,
)
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.models import GeneratedImage
from airflow_provider_imagen.operators import GeneratedImageLink, ImagenGenerateImageOperator
from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger
from tests.conftest import register_dag

ACCOUNT = "acct-trust"
API = "https://api.cloudflare.com/client/v4"
RUN = f"{API}/accounts/{ACCOUNT}/ai/run"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def completed(url: str = "https://pub-x.r2.dev/a.png") -> dict:
    return {"state": "Completed", "result": {"image": url}}


def set_connection(monkeypatch, conn_id: str = "trust", **fields) -> None:
    value = {"conn_type": "cloudflare_workers_ai", "password": "tok-trust", "extra": {"account_id": ACCOUNT}}
    value.update(fields)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))


@pytest.fixture(autouse=True)
def no_connections_off_loopback(monkeypatch):
    """Fail any test that opens a TCP connection to an address outside 127.0.0.0/8 (and record the attempts)."""
    attempts: list[str] = []
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            attempts.append(host)
            raise AssertionError(f"a connection to {host} was attempted")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return attempts


class FakeTaskInstance:
    """What the operators read of a task instance (no task state store: nothing durable)."""

    dag_id, run_id, task_id, map_index, try_number, max_tries = "trust", "manual__1", "gen", -1, 1, 0

    def xcom_push(self, key: str, value: object) -> None:
        pass


# --- 2. Image downloads never reach internal hosts --------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam.png",  # cloud metadata
        "http://10.0.0.7/image.png",
        "https://192.168.1.20/image.png",
        "http://[::1]:8080/image.png",
        "http://[::ffff:10.0.0.7]/image.png",
        "http://0.0.0.0/image.png",
        "http://224.0.0.1/image.png",
        "http://127.0.0.1:9/image.png",  # loopback, while the API is Cloudflare's
        "http://[2002:7f00:1::1]/image.png",  # 6to4 around 127.0.0.1
        "http://2130706433/image.png",  # 127.0.0.1 as one number
    ],
)
def test_an_image_url_at_an_internal_address_is_refused_before_connecting(tmp_path, url, no_connections_off_loopback):
    with pytest.raises(ImageDownloadError, match="not public") as info:
        store_image(output_path=f"{tmp_path}/", url=url, prompt="p", inputs={}, api_host="api.cloudflare.com")
    assert "allowed_image_hosts" in str(info.value)
    assert no_connections_off_loopback == [] and list(tmp_path.iterdir()) == []


def test_a_host_name_that_resolves_inside_is_refused(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, 1, 6, "", ("10.1.2.3", 443))])
    with pytest.raises(ImageDownloadError, match=r"images\.example\.com \(10\.1\.2\.3\)"):
        check_image_url("https://images.example.com/a.png", api_host="api.cloudflare.com")


class _Redirector(http.server.BaseHTTPRequestHandler):
    target = "http://10.0.0.7/image.png"

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirector():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/image.png"
    server.shutdown()
    server.server_close()


def test_a_redirect_to_an_internal_address_is_refused_at_the_hop(tmp_path, redirector, no_connections_off_loopback):
    # The first hop is the API's own private host (the emulator's case): allowed. Its redirect is not.
    with pytest.raises(ImageDownloadError, match=r"10\.0\.0\.7"):
        store_image(output_path=f"{tmp_path}/", url=redirector, prompt="p", inputs={}, api_host="127.0.0.1")
    assert no_connections_off_loopback == [] and list(tmp_path.iterdir()) == []


def test_a_redirect_to_another_port_of_the_apis_private_host_is_refused(
    tmp_path, redirector, monkeypatch, no_connections_off_loopback
):
    # The API (the emulator, a private proxy) is on 127.0.0.1 at the redirector's port: a redirect to another port
    # of that host (a database beside it) is not the API.
    monkeypatch.setattr(_Redirector, "target", "http://127.0.0.1:9/secret.png")
    api = redirector.split("/")[2]  # 127.0.0.1:<port>
    with pytest.raises(ImageDownloadError, match="not public"):
        store_image(output_path=f"{tmp_path}/", url=redirector, prompt="p", inputs={}, api_host=api)


def test_an_admin_can_allow_an_internal_image_host(tmp_path, imagen_emulator, monkeypatch):
    url = CloudflareWorkersAIHook().generate_image("A lighthouse").url
    with pytest.raises(ImageDownloadError):
        store_image(output_path=f"{tmp_path}/", url=url, prompt="p", inputs={}, api_host="api.cloudflare.com")
    monkeypatch.setenv("AIRFLOW__IMAGEN__ALLOWED_IMAGE_HOSTS", "images.internal, 127.0.0.1")
    stored = store_image(output_path=f"{tmp_path}/", url=url, prompt="p", inputs={}, api_host="api.cloudflare.com")
    assert Path(stored.path).read_bytes()[:4] == b"\x89PNG"


def test_a_non_image_body_is_not_echoed_into_the_error(tmp_path, imagen_emulator):
    imagen_emulator.inject("image_not_an_image")
    url = CloudflareWorkersAIHook().generate_image("A lighthouse").url
    with pytest.raises(ImageDownloadError) as info:
        store_image(output_path=f"{tmp_path}/", url=url, prompt="p", inputs={}, api_host="127.0.0.1")
    assert "start with" not in str(info.value) and "<" not in str(info.value)


# --- 3. The token never goes out in clear ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["http://10.20.30.40/client/v4", "http://api.example.com/client/v4"])
def test_a_plain_http_base_url_off_loopback_is_refused_before_any_connection(
    monkeypatch, host, no_connections_off_loopback
):
    set_connection(monkeypatch, host=host)
    with pytest.raises(ConnectionConfigError, match=r"'trust'.*host .*plain http.*in clear"):
        CloudflareWorkersAIHook("trust").generate_image("a cat")
    assert no_connections_off_loopback == []


def test_credentials_in_the_host_field_are_refused_without_quoting_them(monkeypatch):
    set_connection(monkeypatch, host="ftp://me:S3CRET-IN-HOST@api.cloudflare.com/client/v4")
    with pytest.raises(ConnectionConfigError, match="must not hold credentials") as info:
        CloudflareWorkersAIHook("trust").settings  # noqa: B018
    assert "S3CRET-IN-HOST" not in str(info.value)


def test_plain_http_to_loopback_is_allowed(imagen_emulator):
    assert imagen_emulator.url.startswith("http://127.0.0.1")
    assert CloudflareWorkersAIHook().generate_image("a cat").url


# --- 5. One garbled answer loses nothing else --------------------------------------------------------------


@respx.mock
def test_an_undecodable_billed_answer_is_re_sent_under_its_cache_key_and_the_batch_keeps_every_image(monkeypatch):
    set_connection(monkeypatch)
    garbled = {"count": 0}
    keys: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["input"]["prompt"] == "prompt 2":
            keys.append(request.headers["cf-aig-cache-key"])
            if garbled["count"] == 0:
                garbled["count"] += 1
                return httpx.Response(200, content=b"\x1f\x8b not gzip at all", headers={"content-encoding": "gzip"})
        return httpx.Response(200, json=completed(f"https://pub-x.r2.dev/{body['input']['prompt']}.png"))

    respx.post(RUN).mock(side_effect=answer)
    hook = CloudflareWorkersAIHook("trust", retry_backoff=0.001)
    results = hook.generate_images([f"prompt {i}" for i in range(5)], max_concurrency=5)
    assert all(isinstance(r, GeneratedImage) for r in results)
    assert len(keys) == 2 and keys[0] == keys[1]  # re-sent once, under the same key: a cache hit, not a new bill


@respx.mock
def test_an_unexpected_error_in_one_item_is_that_items_failure_only(monkeypatch):
    set_connection(monkeypatch)
    gz = gzip.compress(b"{not json")

    def answer(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["input"]["prompt"]
        if prompt == "prompt 1":  # undecodable, and no cache key: the outcome is unknown, never re-sent
            return httpx.Response(200, content=b"\x1f\x8b garbage", headers={"content-encoding": "gzip"})
        if prompt == "prompt 3":
            return httpx.Response(200, content=gz, headers={"content-encoding": "gzip"})
        return httpx.Response(200, json=completed())

    route = respx.post(RUN).mock(side_effect=answer)
    hook = CloudflareWorkersAIHook("trust", retry_backoff=0.001)
    results = hook.generate_images(
        [f"prompt {i}" for i in range(5)], max_concurrency=5, gateway_options={"skip_cache": True}
    )
    assert isinstance(results[1], GenerationOutcomeUnknownError)
    assert [isinstance(r, GeneratedImage) for r in results] == [True, False, True, False, True]
    assert route.call_count == 5  # nothing cancelled, nothing re-sent blindly


# --- 10. A mapped task never overwrites one file silently --------------------------------------------------


def test_a_literal_file_path_shared_by_a_mapped_task_is_refused_before_any_request(
    airflow_db, imagen_emulator, tmp_path
):
    with DAG(dag_id="trust_mapped_file", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        ImagenGenerateImageOperator.partial(task_id="same", output_path=f"{tmp_path}/same.png").expand(
            prompt=["a", "b", "c"]
        )
        ImagenGenerateImageOperator.partial(
            task_id="templated", output_path=f"{tmp_path}/{{{{ ti.map_index }}}}.png"
        ).expand(prompt=["d", "e"])
    dag_run = register_dag(dag).test()
    states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
    assert {states[("same", i)] for i in range(3)} == {"failed"}
    assert {states[("templated", i)] for i in range(2)} == {"success"}
    assert imagen_emulator.generations == 2  # the refused ones sent nothing
    stored = sorted(p.name for p in tmp_path.iterdir())
    # Each image, and the sidecar that records what made it (a rerun reuses the file instead of paying again).
    assert [name for name in stored if not name.endswith(".json")] == ["0.png", "1.png"]
    assert [name.split(".")[0] for name in stored if name.endswith(".json")] == ["0", "1"]


# --- 11, 12. A token from a file; header-unsafe cache keys -------------------------------------------------


def test_a_token_read_from_a_secret_file_with_a_trailing_newline_works(imagen_emulator, monkeypatch):
    base = f"{imagen_emulator.url}/client/v4"
    monkeypatch.setenv(
        "AIRFLOW_CONN_FROM_FILE",
        json.dumps(
            {
                "conn_type": "cloudflare_workers_ai",
                "password": imagen_emulator.token + "\n",
                "host": base,
                "extra": {"account_id": imagen_emulator.account_id},
            }
        ),
    )
    assert CloudflareWorkersAIHook("from_file").generate_image("a cat").url


@pytest.mark.parametrize("key", ["clé", "two\nlines", "with space", "tab\there"])
def test_a_header_unsafe_cache_key_is_bad_input_before_any_request(imagen_emulator, key):
    with pytest.raises(InvalidInputError, match="cache_key: must be printable ASCII"):
        CloudflareWorkersAIHook().generate_image("a cat", gateway_options={"cache_key": key})
    assert imagen_emulator.api_requests == 0


# --- 13. Rate limits and a redirecting base URL ------------------------------------------------------------


@respx.mock
def test_a_rate_limits_retry_after_longer_than_max_retry_wait_is_waited_within_the_rate_limit_budget(monkeypatch):
    set_connection(monkeypatch)
    refused = {"success": False, "errors": [{"code": 3040, "message": "busy"}]}
    route = respx.post(RUN).mock(
        side_effect=[
            httpx.Response(429, json=refused, headers={"Retry-After": "1"}),
            httpx.Response(200, json=completed()),
        ]
    )
    hook = CloudflareWorkersAIHook("trust", max_retry_wait=0.1, max_rate_limit_wait=30, retry_backoff=0.001)
    started = time.monotonic()
    assert hook.generate_image("a cat").url
    assert route.call_count == 2 and time.monotonic() - started >= 1.0  # it waited as asked


@respx.mock
def test_a_redirect_from_the_base_url_says_check_the_base_url_and_is_not_retried(monkeypatch):
    set_connection(monkeypatch)
    route = respx.post(RUN).respond(301, headers={"Location": "https://www.cloudflare.com/login"}, text="<html>")
    with pytest.raises(ConnectionConfigError, match=r"HTTP 301, redirecting to https://www\.cloudflare\.com/login.*"):
        CloudflareWorkersAIHook("trust").generate_image("a cat")
    assert route.call_count == 1


def test_the_operators_take_the_retry_waits(imagen_emulator):
    op = ImagenGenerateImageOperator(task_id="waits", prompt="a cat", max_retry_wait=2.5, max_rate_limit_wait=42)
    hook = op.get_hook()
    assert (hook.max_retry_wait, hook.max_rate_limit_wait) == (2.5, 42)


# --- 14. A trigger holds a fast event out of Airflow's deferral race ---------------------------------------


def test_a_trigger_fires_no_earlier_than_hold_until(imagen_emulator):
    async def first_event() -> tuple[dict, float]:
        trigger = ImagenGenerateImageTrigger(prompt="a cat", hold_until=time.time() + 1.0)
        started = time.monotonic()
        async for event in trigger.run():
            return event.payload, time.monotonic() - started
        raise AssertionError("no event")

    payload, waited = asyncio.run(first_event())
    assert payload["status"] == "success" and waited >= 0.9


def test_the_operator_defers_with_a_hold_from_the_config(imagen_emulator, monkeypatch):
    from tests.conftest import task_deferred_class

    monkeypatch.setenv("AIRFLOW__IMAGEN__DEFERRAL_MIN_SECONDS", "3")
    with DAG(dag_id="trust_hold", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenGenerateImageOperator(task_id="gen", prompt="a cat", deferrable=True)
    with pytest.raises(task_deferred_class()) as info:
        op.execute({"ti": FakeTaskInstance()})
    _, kwargs = info.value.trigger.serialize()
    assert 2.0 < kwargs["hold_until"] - time.time() <= 3.0
    assert kwargs["schema_version"] == 1


# --- 15. Refusals that cannot succeed fail at once; a refused token names its connection ---------------------


def test_a_content_policy_refusal_fails_the_task_without_retries(imagen_emulator):
    imagen_emulator.inject("content_policy")
    op = ImagenGenerateImageOperator(task_id="policy", prompt="a cat", retries=2)
    with pytest.raises(ContentPolicyError) as info:
        op.execute({"ti": FakeTaskInstance()})
    assert isinstance(info.value, AirflowFailException)


@respx.mock
def test_an_authentication_error_names_the_connection(monkeypatch):
    set_connection(monkeypatch, "team_a_cloudflare")
    respx.post(RUN).respond(
        403, json={"success": False, "errors": [{"code": 10000, "message": "Authentication error"}]}
    )
    with pytest.raises(CloudflareAuthenticationError, match="connection 'team_a_cloudflare'") as info:
        CloudflareWorkersAIHook("team_a_cloudflare").generate_image("a cat")
    assert isinstance(info.value, AirflowFailException) and "tok-trust" not in str(info.value)


# --- 16. No error line that is not an error ----------------------------------------------------------------


def test_the_link_of_a_try_without_an_image_reads_no_xcom(monkeypatch):
    from airflow.sdk.execution_time import xcom

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the link read an XCom")

    monkeypatch.setattr(xcom.XCom, "get_value", no_read)
    op = ImagenGenerateImageOperator(task_id="failed", prompt="a cat")
    assert GeneratedImageLink().get_link(op, ti_key=None) == ""  # type: ignore[arg-type]
    op.image_link = "https://pub-x.r2.dev/a.png"
    assert GeneratedImageLink().get_link(op, ti_key=None) == "https://pub-x.r2.dev/a.png"  # type: ignore[arg-type]
