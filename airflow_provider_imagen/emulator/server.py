"""Running the emulator in a background thread, and a small client for its control routes."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx

from airflow_provider_imagen.emulator.app import create_app
from airflow_provider_imagen.emulator.faults import make_fault
from airflow_provider_imagen.emulator.state import EmulatorConfig

if TYPE_CHECKING:
    import uvicorn


class EmulatorClient:
    """
    Controls a running emulator over HTTP, in this process or another.

    :param url: the emulator's root URL, e.g. ``http://127.0.0.1:8787``.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def api_base(self) -> str:
        """What a connection's host should be: the emulator's ``/client/v4``."""
        return f"{self.url}/client/v4"

    def inject(self, preset: str | None = None, *, times: int = 1, **fields: Any) -> None:
        """
        Queue ``times`` copies of a fault for the next API requests.

        :param preset: a name from :data:`~airflow_provider_imagen.emulator.faults.PRESETS` (e.g. ``capacity``).
        :param fields: explicit fault fields (``kind``, ``status``, ``code``, ``message``, ``retry_after``,
            ``delay``, ``state``), overriding the preset's.
        """
        fault = make_fault(preset, **fields).model_dump(exclude_none=True)
        self._post("/__emulator__/faults", {"faults": [fault] * times})

    def configure(self, **settings: Any) -> dict[str, Any]:
        """
        Change the emulator's configuration while it runs, and return the configuration now in force.

        :param settings: any of ``latency``, ``failure_rate``, ``token_status``, ``token_kind``,
            ``workers_ai_access``, ``public_url``, ``seed``, ``rate_limit_per_minute`` or ``rate_limit_burst``
            (a changed rate limit starts with a full bucket).
        """
        response = self._http.patch("/__emulator__/config", json=settings)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stats(self) -> dict[str, Any]:
        """Request counts (``api_requests``, ``image_requests``, ...) and the most recent API requests."""
        response = self._http.get("/__emulator__/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    @property
    def api_requests(self) -> int:
        """How many API calls (generation attempts) the emulator has seen since the last reset."""
        return int(self.stats()["api_requests"])

    @property
    def generations(self) -> int:
        """How many generations completed (what Cloudflare bills), whether or not the client still waited."""
        return int(self.stats()["generations"])

    def wait_for_generations(self, count: int, timeout: float = 10.0) -> int:
        """
        Return the generation count once it reaches ``count`` (a slow generation outlives its client).

        :param count: the generations to wait for.
        :param timeout: the seconds to wait at most; then the count so far is returned.
        """
        deadline = time.monotonic() + timeout
        while (seen := self.generations) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return seen

    def reset(self) -> None:
        """Forget faults, counters, images and configuration changes."""
        self._post("/__emulator__/reset", None)

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    def _post(self, path: str, payload: Any) -> None:
        response = self._http.post(path, content=json.dumps(payload) if payload is not None else b"")
        response.raise_for_status()


class EmulatorServer:
    """
    The emulator served by uvicorn in a daemon thread, on 127.0.0.1 and a free port by default.

    .. code-block:: python

        with EmulatorServer() as emulator:
            print(emulator.api_base)  # http://127.0.0.1:PORT/client/v4
            emulator.client.inject("capacity")
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._client: EmulatorClient | None = None
        self.port = port

    @property
    def url(self) -> str:
        """The emulator's base URL, ``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """What a connection's host should be: the emulator's ``/client/v4``."""
        return f"{self.url}/client/v4"

    @property
    def client(self) -> EmulatorClient:
        """A client of the emulator's control routes, made on first use."""
        if self._client is None:
            self._client = EmulatorClient(self.url)
        return self._client

    def start(self, timeout: float = 10.0) -> EmulatorServer:
        """
        Start serving in a daemon thread, and return the server once it accepts connections.

        :param timeout: the seconds to wait for it to start.
        :raises RuntimeError: if it did not start in time.
        """
        import uvicorn

        # Bind first, so the port is known (and ours) before uvicorn starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            create_app(self.config),
            log_level=self._log_level,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            backlog=2048,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="imagen-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """
        Stop serving at once, without waiting for answers in flight.

        :param timeout: the seconds to wait for the server's thread to end.
        """
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.should_exit = True
            # Do not wait for in-flight answers (a queued slow fault may sleep for minutes).
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._server = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def connection_json(self, conn_type: str = "cloudflare_workers_ai", account_id: str = "emulator-account") -> str:
        """
        Return an ``AIRFLOW_CONN_...`` value pointing a connection at this emulator.

        :param conn_type: the connection's type.
        :param account_id: the Cloudflare account id the connection names.
        """
        return json.dumps(
            {
                "conn_type": conn_type,
                "host": self.api_base,
                "password": self.config.token,
                "extra": {"account_id": account_id},
            }
        )


class EmulatorFixture(EmulatorClient):
    """What the ``imagen_emulator`` fixture hands a test: fault controls, counts, and the URLs."""

    def __init__(self, server: EmulatorServer) -> None:
        super().__init__(server.url)
        self.server = server
        self.token = server.config.token
        self.account_id = "emulator-account"
        self.conn_id = "cloudflare_workers_ai_default"
