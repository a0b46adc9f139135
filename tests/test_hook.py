"""The hook on the wire: routes, headers, every response shape and every retry rule (respx)."""

from __future__ import annotations

import base64
import json
import logging

import httpx
import pytest
import respx

from airflow_provider_imagen.exceptions import (
    CloudflareAuthenticationError,
    CloudflareBadRequestError,
    CloudflareRateLimitError,
    CloudflareServerError,
    ConnectionConfigError,
    GenerationOutcomeUnknownError,
    ImageGenerationFailedError,
    InvalidInputError,
)
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

BASE = "https://api.cloudflare.com/client/v4"
ACCOUNT = "acc123"
RUN = f"{BASE}/accounts/{ACCOUNT}/ai/run"
TOKEN = "tok-SECRET-0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
IMAGE_URL = "https://pub-1.r2.dev/images/puppy.png"
COMPLETED = {"state": "Completed", "result": {"image": IMAGE_URL}, "gatewayMetadata": {"keySource": "Unified"}}


def set_connection(monkeypatch, conn_id="cloudflare_workers_ai_default", **fields):
    conn = {"conn_type": "cloudflare_workers_ai", "password": TOKEN, "extra": {"account_id": ACCOUNT}}
    extra = fields.pop("extra", None)
    conn.update(fields)
    if extra is not None:
        conn["extra"] = extra
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def hook(monkeypatch):
    set_connection(monkeypatch)
    with CloudflareWorkersAIHook(max_retries=2, retry_backoff=0.001, max_retry_wait=1, max_rate_limit_wait=0.2) as h:
        yield h


def logged(caplog, capsys) -> list[str]:
    """Log lines, whether Airflow routed them to logging (caplog) or structlog's stdout."""
    return [r.getMessage() for r in caplog.records] + capsys.readouterr().out.splitlines()


# --- Connection -------------------------------------------------------------------------------------


def test_settings_from_a_minimal_env_connection(hook):
    settings = hook.settings
    assert (settings.base_url, settings.account_id, settings.timeout, settings.max_retries) == (
        BASE,
        ACCOUNT,
        180.0,
        3,
    )
    assert TOKEN not in repr(settings)
    assert TOKEN not in repr(hook)


def test_connection_extras_and_host(monkeypatch):
    set_connection(
        monkeypatch,
        host="http://127.0.0.1:8787/client/v4/",
        extra={"account_id": ACCOUNT, "gateway_id": "gw-1", "timeout": "30", "max_retries": "5"},
    )
    settings = CloudflareWorkersAIHook().settings
    assert settings.base_url == "http://127.0.0.1:8787/client/v4"
    assert (settings.gateway_id, settings.timeout, settings.max_retries) == ("gw-1", 30.0, 5)


@respx.mock
def test_requests_go_under_the_connections_host_and_path(monkeypatch):
    set_connection(monkeypatch, host="http://127.0.0.1:8787/client/v4/")
    imagen = respx.post(f"http://127.0.0.1:8787/client/v4/accounts/{ACCOUNT}/ai/run").respond(json=COMPLETED)
    flux = respx.post(f"http://127.0.0.1:8787/client/v4/accounts/{ACCOUNT}/ai/run/@cf/black-forest-labs/flux-1-schnell")
    flux.respond(json={"success": True, "result": {"image": base64.b64encode(JPEG).decode()}})
    with CloudflareWorkersAIHook() as hook:
        for _ in range(2):  # the second call of each model reuses its URL
            assert hook.generate_image("a cat").url == IMAGE_URL
            assert hook.generate_image("a fox", model="@cf/black-forest-labs/flux-1-schnell").data == JPEG
    assert (imagen.call_count, flux.call_count) == (2, 2)


def test_host_without_scheme_takes_the_schema_field_and_a_separate_port(monkeypatch):
    # A URI connection (cloudflare_workers_ai://...) keeps the scheme in ``schema``.
    set_connection(monkeypatch, host="proxy.internal", schema="https", port=8443)
    assert CloudflareWorkersAIHook().settings.base_url == "https://proxy.internal:8443"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"password": None}, "the API token is missing"),
        ({"extra": {}}, "extra 'account_id' is missing"),
        ({"extra": {"account_id": "a/b"}}, "extra 'account_id' must be"),
        ({"extra": {"account_id": ACCOUNT, "timeout": "soon"}}, "extra 'timeout' must be a number"),
        ({"extra": {"account_id": ACCOUNT, "timeout": 0}}, "extra 'timeout' must be between"),
        ({"extra": {"account_id": ACCOUNT, "max_retries": 99}}, "extra 'max_retries' must be between 0 and 10"),
        ({"extra": {"account_id": ACCOUNT, "max_retries": "many"}}, "extra 'max_retries' must be a whole number"),
        ({"extra": {"account_id": ACCOUNT, "gateway_id": "a b"}}, "extra 'gateway_id' must be"),
        ({"host": "ftp://example.com/x"}, "host must be an http(s) URL"),
        # Taken as https before: the TLS error then came late, and was retried as if transient.
        ({"host": "127.0.0.1:8787/client/v4"}, "host '127.0.0.1:8787/client/v4' has no scheme"),
        ({"host": "https://user:pw@example.com/client/v4"}, "host must not hold credentials"),
    ],
)
def test_bad_connection_is_a_clear_error_naming_connection_and_field(monkeypatch, fields, expected):
    set_connection(monkeypatch, conn_id="my_cf", **fields)
    with respx.mock(assert_all_mocked=True) as router:
        with pytest.raises(ConnectionConfigError) as info:
            CloudflareWorkersAIHook("my_cf").generate_image("a cat")
        assert router.calls.call_count == 0
    assert "Connection 'my_cf'" in str(info.value)
    assert expected in str(info.value)
    assert TOKEN not in str(info.value)


# --- Requests ---------------------------------------------------------------------------------------


@respx.mock
def test_imagen_request_matches_the_documented_call(hook):
    route = respx.post(RUN).respond(json=COMPLETED)
    image = hook.generate_image("A golden retriever puppy", "16:9", "allow_adult")

    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {
        "model": "google/imagen-4",
        "input": {"prompt": "A golden retriever puppy", "aspect_ratio": "16:9", "person_generation": "allow_adult"},
    }
    assert "cf-aig-gateway-id" not in request.headers
    assert image.url == IMAGE_URL
    assert (image.width, image.height, image.key_source, image.attempts) == (1408, 768, "Unified", 1)


@respx.mock
def test_cloudflare_models_go_to_the_model_in_path_route(hook):
    route = respx.post(f"{RUN}/@cf/black-forest-labs/flux-1-schnell").respond(
        json={"success": True, "errors": [], "messages": [], "result": {"image": base64.b64encode(JPEG).decode()}}
    )
    image = hook.generate_image("a fox", model="@cf/black-forest-labs/flux-1-schnell")
    assert json.loads(route.calls.last.request.content) == {"prompt": "a fox"}
    assert (image.url, image.data, image.media_type) == (None, JPEG, "image/jpeg")


@respx.mock
def test_raw_image_bytes_are_trusted_over_the_content_type(hook):
    respx.post(f"{RUN}/@cf/stabilityai/stable-diffusion-xl-base-1.0").respond(
        content=PNG, headers={"content-type": "image/jpeg"}
    )
    image = hook.generate_image("a fox", model="@cf/stabilityai/stable-diffusion-xl-base-1.0")
    assert (image.data, image.media_type) == (PNG, "image/png")


@respx.mock
def test_gateway_id_from_the_connection_and_options_per_request(monkeypatch):
    set_connection(monkeypatch, extra={"account_id": ACCOUNT, "gateway_id": "conn-gw"})
    route = respx.post(RUN).respond(json=COMPLETED)
    with CloudflareWorkersAIHook() as hook:
        hook.generate_image("a cat")
        assert route.calls.last.request.headers["cf-aig-gateway-id"] == "conn-gw"
        hook.generate_image("a cat", gateway_options={"gateway_id": "other", "cache_ttl": 60, "skip_cache": True})
    headers = route.calls.last.request.headers
    assert (headers["cf-aig-gateway-id"], headers["cf-aig-cache-ttl"], headers["cf-aig-skip-cache"]) == (
        "other",
        "60",
        "true",
    )


@respx.mock
def test_one_pooled_client_is_reused_across_calls(hook):
    respx.post(RUN).respond(json=COMPLETED)
    client = hook.get_conn()
    hook.generate_image("one")
    hook.generate_image("two")
    assert hook.get_conn() is client
    hook.close()
    assert client.is_closed


@pytest.mark.parametrize("bad", [{"prompt": ""}, {"prompt": "x", "aspect_ratio": "5:4"}])
def test_bad_input_never_reaches_the_network(hook, bad):
    with respx.mock(assert_all_called=False) as router:
        route = router.post(RUN).respond(json=COMPLETED)
        with pytest.raises(InvalidInputError):
            hook.generate_image(**bad)
        assert route.call_count == 0


@pytest.mark.parametrize(
    "model",
    [
        "google imagen",
        "@cf/../../../../user/tokens",
        "@cf/../../../../../user/tokens",
        "google/../../user/tokens",
        "@cf/%2e%2e/%2e%2e/user/tokens",
        "@cf/a/./b",
        "/google/imagen-4",
        "google/imagen-4/",
        "imagen-4",
        "@xx/meta/model",
        "@cf/a?b=c",
        "@cf/a#b",
        "https://evil.example/x",
        "",
        None,
    ],
)
def test_a_malformed_model_id_is_refused_before_any_request(hook, model):
    with respx.mock(assert_all_called=False) as router:
        route = router.route()
        with pytest.raises(InvalidInputError, match="Invalid model: expected a Workers AI model id"):
            hook.run(model, {"prompt": "x"})
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("google/imagen-4", f"/client/v4/accounts/{ACCOUNT}/ai/run"),
        (
            "@cf/black-forest-labs/flux-1-schnell",
            f"/client/v4/accounts/{ACCOUNT}/ai/run/@cf/black-forest-labs/flux-1-schnell",
        ),
        ("@hf/vendor/model.v1_2", f"/client/v4/accounts/{ACCOUNT}/ai/run/@hf/vendor/model.v1_2"),
    ],
)
@respx.mock
def test_well_formed_model_ids_stay_under_the_accounts_run_route(hook, model, path):
    route = respx.post(url__startswith=BASE).mock(return_value=httpx.Response(200, content=PNG))
    hook.run(model, {"prompt": "x"})
    assert route.calls.last.request.url.path == path


# --- Every response shape and every row of the retry table --------------------------------------------


def envelope_error(code, message):
    return {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}


#: Refusals by a rate limit are not counted against max_retries: re-sent until the rate-limit budget runs out.
RATE_LIMITED = -1

# (name, response kwargs, expected error type or None for success, attempts with max_retries=2)
CASES = [
    (
        "capacity 429/3040",
        {"status_code": 429, "json": envelope_error(3040, "Capacity")},
        CloudflareRateLimitError,
        RATE_LIMITED,
    ),
    ("daily 429/3036", {"status_code": 429, "json": envelope_error(3036, "daily")}, CloudflareRateLimitError, 1),
    (
        "wholesale 429/2021",
        {"status_code": 429, "json": envelope_error(2021, "Wholesale rate limit exceeded")},
        CloudflareRateLimitError,
        RATE_LIMITED,
    ),
    (
        "wholesale 200/2021",
        {"status_code": 200, "json": envelope_error(2021, "Wholesale rate limit exceeded")},
        CloudflareRateLimitError,
        RATE_LIMITED,
    ),
    (
        "unified billing 2021",
        {"status_code": 400, "json": envelope_error(2021, "not available via unified billing")},
        CloudflareBadRequestError,
        1,
    ),
    ("400/5004", {"status_code": 400, "json": envelope_error(5004, "Invalid data")}, CloudflareBadRequestError, 1),
    ("401/2009", {"status_code": 401, "json": envelope_error(2009, "rejected")}, CloudflareAuthenticationError, 1),
    ("403/10000", {"status_code": 403, "json": envelope_error(10000, "Auth")}, CloudflareAuthenticationError, 1),
    ("404/3042", {"status_code": 404, "json": envelope_error(3042, "Invalid model")}, CloudflareBadRequestError, 1),
    ("408/3007", {"status_code": 408, "json": envelope_error(3007, "Timeout")}, CloudflareServerError, 3),
    ("413/3006", {"status_code": 413, "json": envelope_error(3006, "Too large")}, CloudflareBadRequestError, 1),
    ("500", {"status_code": 500, "json": envelope_error(3043, "Internal")}, CloudflareServerError, 3),
    (
        "502 html",
        {"status_code": 502, "html": "<html><head><title>502 Bad Gateway</title></head></html>"},
        CloudflareServerError,
        3,
    ),
    ("503", {"status_code": 503, "text": ""}, CloudflareServerError, 3),
    ("504", {"status_code": 504, "text": "upstream timed out"}, CloudflareServerError, 3),
    (
        "Failed provider_unavailable",
        {"status_code": 200, "json": {"state": "Failed", "error": {"code": "provider_unavailable", "message": "x"}}},
        ImageGenerationFailedError,
        3,
    ),
    (
        "Failed other",
        {"status_code": 200, "json": {"state": "Failed", "error": {"code": "content_policy", "message": "no"}}},
        ImageGenerationFailedError,
        1,
    ),
    (
        "success false on 200",
        {"status_code": 200, "json": envelope_error(3040, "busy")},
        CloudflareRateLimitError,
        RATE_LIMITED,
    ),
    ("unknown state", {"status_code": 200, "json": {"state": "Queued"}}, ImageGenerationFailedError, 1),
    ("no image", {"status_code": 200, "json": {"state": "Completed", "result": {}}}, ImageGenerationFailedError, 1),
    ("empty 200", {"status_code": 200, "content": b""}, CloudflareServerError, 3),
    ("truncated 200", {"status_code": 200, "content": b'{"state": "Compl'}, CloudflareServerError, 3),
    ("completed", {"status_code": 200, "json": COMPLETED}, None, 1),
    (
        "v4 envelope with url",
        {"status_code": 200, "json": {"success": True, "errors": [], "result": {"image": IMAGE_URL}}},
        None,
        1,
    ),
]


@pytest.mark.parametrize(("name", "response", "error_type", "attempts"), CASES, ids=[c[0] for c in CASES])
@respx.mock
def test_response_shapes_and_retry_table(hook, name, response, error_type, attempts):
    route = respx.post(RUN).mock(return_value=httpx.Response(**response))
    if error_type is None:
        assert hook.generate_image("a cat").url == IMAGE_URL
    else:
        with pytest.raises(error_type) as info:
            hook.generate_image("a cat")
        if attempts == RATE_LIMITED:  # more than max_retries allows, within the budget
            attempts = info.value.attempts
            assert attempts > 3
        assert info.value.attempts == attempts
        assert info.value.model == "google/imagen-4"
        if response.get("json", {}).get("errors"):
            error = response["json"]["errors"][0]
            assert f"code {error['code']}" in str(info.value)
            assert error["message"] in str(info.value)
        assert TOKEN not in str(info.value)
    assert route.call_count == attempts


@respx.mock
def test_transient_failure_then_success_reports_attempts(hook, caplog, capsys):
    respx.post(RUN).mock(
        side_effect=[
            httpx.Response(429, json=envelope_error(3040, "Capacity temporarily exceeded")),
            httpx.ConnectError("connection refused"),
            httpx.Response(200, json=COMPLETED),
        ]
    )
    with caplog.at_level(logging.INFO):
        image = hook.generate_image("a cat")
    assert image.attempts == 3  # requests sent
    retries = [line for line in logged(caplog, capsys) if "retrying in" in line]
    assert len(retries) == 2
    # A refusal by the rate limit is not billed and not counted: the connection error is the first failure.
    assert "refused by the rate limit" in retries[0] and "code 3040" in retries[0]
    assert "attempt 1 of 3" in retries[1] and "ConnectError" in retries[1]


@respx.mock
def test_a_read_timeout_is_never_re_sent_blindly(hook):
    # The request reached Cloudflare: its generation may still run and be billed; a re-send would pay twice.
    route = respx.post(RUN).mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(GenerationOutcomeUnknownError, match="may have been generated and billed") as info:
        hook.generate_image("a cat")
    assert route.call_count == 1
    assert info.value.status_code is None
    assert "api.cloudflare.com" in str(info.value)  # names the host it tried


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow connect"), httpx.PoolTimeout("pool busy")],
    ids=["connect error", "connect timeout", "pool timeout"],
)
@respx.mock
def test_a_request_that_never_left_is_retried_freely(hook, error):
    route = respx.post(RUN).mock(side_effect=[error, error, httpx.Response(200, json=COMPLETED)])
    assert hook.generate_image("a cat").attempts == 3
    assert route.call_count == 3


@respx.mock
def test_a_cut_answer_is_re_sent_only_with_its_cache_key(hook):
    cut = httpx.RemoteProtocolError("peer closed connection without sending complete message body")
    route = respx.post(RUN).mock(side_effect=[cut, httpx.Response(200, json=COMPLETED)])
    assert hook.generate_image("a cat").attempts == 2
    first, second = (call.request.headers for call in route.calls)
    assert first["cf-aig-cache-key"] == second["cf-aig-cache-key"]  # the re-send finds the first answer

    route.reset()
    route.mock(side_effect=[cut, httpx.Response(200, json=COMPLETED)])
    with pytest.raises(GenerationOutcomeUnknownError):
        hook.generate_image("a cat", gateway_options={"skip_cache": True})  # no key: never re-sent
    assert route.call_count == 1


@respx.mock
def test_every_call_has_its_own_cache_key_unless_the_caller_names_one(hook):
    route = respx.post(RUN).respond(json=COMPLETED)
    hook.generate_image("a cat")
    hook.generate_image("a cat")
    hook.generate_image("a cat", gateway_options={"cache_key": "mine", "cache_ttl": "120"})
    keys = [call.request.headers["cf-aig-cache-key"] for call in route.calls]
    assert keys[0] != keys[1] and keys[2] == "mine"
    assert route.calls[2].request.headers["cf-aig-cache-ttl"] == "120"


def test_a_tls_handshake_that_cannot_succeed_fails_at_once(monkeypatch):
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = []

    def plain_http_server():
        # Answers a TLS ClientHello with plain HTTP, as an http:// server reached over https does.
        while len(accepted) < 5:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    threading.Thread(target=plain_http_server, daemon=True).start()
    set_connection(monkeypatch, host=f"https://127.0.0.1:{port}/client/v4")
    try:
        with (
            CloudflareWorkersAIHook(max_retries=3, retry_backoff=0.01) as hook,
            pytest.raises(ConnectionConfigError) as info,
        ):
            hook.generate_image("a cat")
    finally:
        server.close()
    assert f"TLS handshake with 127.0.0.1:{port} failed" in str(info.value)
    assert len(accepted) == 1  # not retried as if transient


@respx.mock
def test_retry_after_is_honoured(hook, caplog, capsys):
    respx.post(RUN).mock(
        side_effect=[
            httpx.Response(429, json=envelope_error(3040, "busy"), headers={"Retry-After": "0.3"}),
            httpx.Response(200, json=COMPLETED),
        ]
    )
    with caplog.at_level(logging.INFO):
        hook.generate_image("a cat")
    assert any("retrying in 0.3 s" in line for line in logged(caplog, capsys))


@respx.mock
def test_retry_after_longer_than_allowed_stops_at_once(hook):
    route = respx.post(RUN).respond(429, json=envelope_error(3040, "busy"), headers={"Retry-After": "3600"})
    with pytest.raises(CloudflareRateLimitError) as info:
        hook.generate_image("a cat")
    assert route.call_count == 1
    assert info.value.retry_after == 3600


@respx.mock
def test_max_retries_zero_means_one_attempt(monkeypatch):
    set_connection(monkeypatch, extra={"account_id": ACCOUNT, "max_retries": 0})
    route = respx.post(RUN).respond(503)
    with pytest.raises(CloudflareServerError), CloudflareWorkersAIHook() as hook:
        hook.generate_image("a cat")
    assert route.call_count == 1


# --- Async twins ---------------------------------------------------------------------------------------


async def _agenerate(hook, **kwargs):
    async with hook:
        return await hook.agenerate_image("a cat", **kwargs)


@pytest.mark.parametrize(("name", "response", "error_type", "attempts"), CASES[::3], ids=[c[0] for c in CASES[::3]])
def test_async_path_shares_shapes_and_retries(hook, name, response, error_type, attempts):
    import asyncio

    with respx.mock:
        route = respx.post(RUN).mock(return_value=httpx.Response(**response))
        if error_type is None:
            assert asyncio.run(_agenerate(hook)).url == IMAGE_URL
        else:
            with pytest.raises(error_type) as info:
                asyncio.run(_agenerate(hook))
            if attempts == RATE_LIMITED:  # more than max_retries allows, within the budget
                attempts = info.value.attempts
                assert attempts > 3
            assert info.value.attempts == attempts
        assert route.call_count == attempts


# --- test_connection -------------------------------------------------------------------------------------

USER_VERIFY = f"{BASE}/user/tokens/verify"
ACCOUNT_VERIFY = f"{BASE}/accounts/{ACCOUNT}/tokens/verify"
MODELS = f"{BASE}/accounts/{ACCOUNT}/ai/models/search"
INVALID = {"status_code": 401, "json": envelope_error(1000, "Invalid API Token")}


def verified(status):
    return {"json": {"success": True, "errors": [], "messages": [], "result": {"id": "x", "status": status}}}


MODELS_OK = {"json": {"success": True, "errors": [], "messages": [], "result": [{"name": "google/imagen-4"}]}}


@pytest.mark.parametrize(
    ("user", "account", "models", "ok", "text"),
    [
        # User tokens (My Profile > API Tokens) are refused by the account route: they verified as bad before.
        (verified("active"), INVALID, MODELS_OK, True, "an active user API token that reaches Workers AI"),
        (INVALID, verified("active"), MODELS_OK, True, "an active account-owned API token that reaches Workers AI"),
        (verified("expired"), INVALID, MODELS_OK, False, "a user token, and it is expired"),
        (INVALID, verified("disabled"), MODELS_OK, False, "an account-owned token, and it is disabled"),
        (
            INVALID,
            INVALID,
            MODELS_OK,
            False,
            "refused as a user token: Cloudflare Workers AI error (HTTP 401, code 1000)",
        ),
        (
            verified("active"),
            INVALID,
            {"status_code": 401, "json": envelope_error(10000, "Authentication error")},
            False,
            "an active user token, but it cannot reach Workers AI on account acc123",
        ),
    ],
)
def test_test_connection_tells_the_kind_of_token_its_status_and_workers_ai_access(
    hook, user, account, models, ok, text
):
    with respx.mock(assert_all_called=False) as router:
        router.get(USER_VERIFY).mock(return_value=httpx.Response(**{"status_code": 200, **user}))
        router.get(ACCOUNT_VERIFY).mock(return_value=httpx.Response(**{"status_code": 200, **account}))
        listed = router.get(MODELS).mock(return_value=httpx.Response(**{"status_code": 200, **models}))
        result, message = hook.test_connection()
    assert (result, text) == (ok, text) and text in message, message
    assert TOKEN not in message
    if ok:
        assert listed.calls.last.request.url.params["per_page"] == "1"  # a free, read-only call


def test_concurrent_first_calls_make_one_async_client(imagen_emulator):
    """A batch's first 50 calls all ask for the client at once: one client, not 50 leaked ones."""
    import asyncio

    async def main() -> set[int]:
        hook = CloudflareWorkersAIHook()
        try:
            clients = await asyncio.gather(*(hook.aget_conn() for _ in range(50)))
        finally:
            await hook.aclose()
        return {id(client) for client in clients}

    assert len(asyncio.run(main())) == 1


@respx.mock
def test_a_404_that_is_not_cloudflares_points_at_the_base_url(hook):
    # e.g. a host of https://api.cloudflare.com without /client/v4: the answer is a plain 404 page
    route = respx.post(RUN).respond(404, text="404 page not found")
    with pytest.raises(CloudflareBadRequestError) as info:
        hook.generate_image("a cat")
    assert route.call_count == 1  # a configuration error is not retried
    assert "api.cloudflare.com/client/v4/accounts/acc123/ai/run: check the connection's API base URL" in str(info.value)
