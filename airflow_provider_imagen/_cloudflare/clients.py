"""
Share async clients, and the connection reads behind them, among the triggers of one event loop.

Each client has a lifecycle: a client that is replaced (a rotated token, another timeout) or evicted is closed as soon
as the last trigger using it lets go, so a long-lived triggerer holds a bounded number of clients and sockets.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen._cloudflare.transport import SpreadTransport

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    import httpx

    from airflow_provider_imagen._cloudflare.settings import ConnectionSettings

#: Seconds the triggers of one event loop reuse a connection one of them read. A changed connection
#: (a rotated token, say) reaches new triggers within this time.
SHARED_SETTINGS_SECONDS = 10.0
#: Clients one event loop keeps at most (one per connection and timeout); the least recently used goes first.
MAX_CLIENTS_PER_LOOP = 16


@dataclass
class _Entry:
    client: httpx.AsyncClient
    fingerprint: tuple[Any, ...]  # what the client was made with: base URL, token, timeout
    leases: int = 0
    retired: bool = False


class SharedAsyncClients:
    """
    Lend one ``httpx.AsyncClient`` per event loop, connection and timeout to every hook that asks for it.

    Each connection's settings are read once per :data:`SHARED_SETTINGS_SECONDS` in that loop.

    The triggerer runs hundreds of triggers in one event loop: sharing one client keeps the number of
    sockets and TLS sessions bounded instead of one pool per trigger, and sharing the read spares the
    triggerer one connection lookup (a round trip to its supervisor) per trigger.
    """

    def __init__(self) -> None:
        # Keyed by the loop itself: a client or a read belongs to the loop it was made in. Dicts keep
        # insertion order, which serves as the least-recently-used order.
        self._entries: dict[tuple[asyncio.AbstractEventLoop, str, float], _Entry] = {}
        self._retired: list[tuple[asyncio.AbstractEventLoop, _Entry]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._settings: dict[tuple[asyncio.AbstractEventLoop, str], tuple[float, asyncio.Task[ConnectionSettings]]] = {}

    def _forget_closed_loops(self) -> None:
        # What belongs to a closed loop can no longer be used, and keeps the loop alive.
        for stale in [k for k in self._entries if k[0].is_closed()]:
            del self._entries[stale]
        self._retired = [(loop, entry) for loop, entry in self._retired if not loop.is_closed()]
        for stale_key in [k for k in self._settings if k[0].is_closed()]:
            del self._settings[stale_key]

    def acquire(
        self, conn_id: str, timeout: float, fingerprint: tuple[Any, ...], make: Callable[[], httpx.AsyncClient]
    ) -> httpx.AsyncClient:
        """
        Lease the shared client for ``conn_id`` and ``timeout`` in this loop, until :meth:`release`.

        A client made with another ``fingerprint`` (the connection changed) is replaced, and closed once
        its last lease is released.
        """
        self._forget_closed_loops()
        loop = asyncio.get_running_loop()
        key = (loop, conn_id, timeout)
        entry = self._entries.pop(key, None)
        if entry is not None and (entry.fingerprint != fingerprint or entry.client.is_closed):
            self._retire(loop, entry)
            entry = None
        if entry is None:
            entry = _Entry(make(), fingerprint)
        self._entries[key] = entry  # (re)inserted last: the most recently used
        entry.leases += 1
        loop_keys = [k for k in self._entries if k[0] is loop]
        for old in loop_keys[: max(0, len(loop_keys) - MAX_CLIENTS_PER_LOOP)]:
            self._retire(loop, self._entries.pop(old))
        return entry.client

    async def release(self, client: httpx.AsyncClient) -> None:
        """Give back a lease; a replaced client is closed when its last lease comes back."""
        loop = asyncio.get_running_loop()
        for entry in [e for k, e in self._entries.items() if k[0] is loop] + [
            e for lp, e in self._retired if lp is loop
        ]:
            if entry.client is client:
                entry.leases = max(0, entry.leases - 1)
                if entry.retired and entry.leases == 0:
                    self._retired = [(lp, e) for lp, e in self._retired if e is not entry]
                    await client.aclose()
                return

    def _retire(self, loop: asyncio.AbstractEventLoop, entry: _Entry) -> None:
        entry.retired = True
        if entry.leases == 0:
            task = loop.create_task(entry.client.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            self._retired.append((loop, entry))

    async def settings(
        self, conn_id: str, read: Callable[[], Coroutine[Any, Any, ConnectionSettings]]
    ) -> ConnectionSettings:
        """
        Return ``conn_id``'s settings, read by ``read()`` at most once per :data:`SHARED_SETTINGS_SECONDS` in this loop.

        Callers that ask while a read is under way wait for it instead of starting their own.
        A failed read is not kept, so the next caller reads again.
        """
        self._forget_closed_loops()
        loop = asyncio.get_running_loop()
        key = (loop, conn_id)
        entry = self._settings.get(key)
        if entry is None or loop.time() >= entry[0] or entry[1].cancelled():
            entry = self._settings[key] = (loop.time() + SHARED_SETTINGS_SECONDS, loop.create_task(read()))
        try:
            # Shielded: one caller being cancelled must not cancel the read the others wait for.
            return await asyncio.shield(entry[1])
        except Exception:
            if self._settings.get(key) is entry:
                del self._settings[key]
            raise

    async def aclose(self) -> None:
        """Close every shared client of the running event loop (e.g. when a triggerer or a test winds down)."""
        loop = asyncio.get_running_loop()
        for key in [k for k in self._settings if k[0] is loop]:
            del self._settings[key]
        entries = [self._entries.pop(k) for k in [k for k in self._entries if k[0] is loop]]
        entries += [entry for lp, entry in self._retired if lp is loop]
        self._retired = [(lp, entry) for lp, entry in self._retired if lp is not loop]
        for entry in entries:
            await entry.client.aclose()
        pending = [task for task in self._closing if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def open_clients(self) -> int:
        """How many shared clients are open, current and replaced ones alike."""
        entries = list(self._entries.values()) + [entry for _, entry in self._retired]
        return sum(not entry.client.is_closed for entry in entries)

    def __len__(self) -> int:
        return len(self._entries)

    def connection_pools(self) -> int:
        """How many connection pools the shared clients hold in all (see :class:`SpreadTransport`)."""
        transports = (entry.client._transport for entry in self._entries.values())
        return sum(t.pools for t in transports if isinstance(t, SpreadTransport))


shared_async_clients = SharedAsyncClients()
