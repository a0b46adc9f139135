"""
Test a connection, as the UI's Test button does.

It finds which kind of token it is, whether it is active, and whether it reaches Workers AI on the connection's
account. Free calls only: no model runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from airflow_provider_imagen._cloudflare.response import parse_response
from airflow_provider_imagen._cloudflare.transport import transport_error
from airflow_provider_imagen.exceptions import CloudflareAuthenticationError, CloudflareWorkersAIError

if TYPE_CHECKING:
    from airflow_provider_imagen._cloudflare.settings import ConnectionSettings


def check_connection(settings: ConnectionSettings, client: httpx.Client) -> tuple[bool, str]:
    """
    Verify the token, then list one Workers AI model on the account.

    The token is tried as a user token, then as an account-owned token (each route refuses the other kind).

    :return: ``(ok, message)`` in plain words, never the token.
    """
    account = settings.account_id
    routes = (("a user", "/user/tokens/verify"), ("an account-owned", f"/accounts/{account}/tokens/verify"))
    refusals: list[str] = []
    for a_kind, path in routes:
        kind = a_kind.partition(" ")[2]
        try:
            result = _get(client, settings, path)
        except CloudflareAuthenticationError as err:
            refusals.append(f"as {a_kind} token: {err}")
            continue
        status = (result or {}).get("status") if isinstance(result, dict) else None
        if status != "active":
            what = status if status in ("expired", "disabled") else f"not active (status {status!r})"
            return False, f"The API token is {a_kind} token, and it is {what}: create a new one in the dashboard."
        try:
            _get(client, settings, f"/accounts/{account}/ai/models/search", params={"per_page": 1})
        except CloudflareWorkersAIError as err:
            return False, (
                f"The API token is an active {kind} token, but it cannot reach Workers AI on account {account} "
                f"({err}): give it the Workers AI and AI Gateway permissions for this account."
            )
        return True, f"Connection works: an active {kind} API token that reaches Workers AI on account {account}."
    return False, "The API token was refused " + "; and ".join(refusals) + "."


def _get(client: httpx.Client, settings: ConnectionSettings, path: str, params: dict[str, Any] | None = None) -> Any:
    try:
        response = client.get(path, params=params)
    except httpx.TransportError as exc:
        raise transport_error(exc, settings.host) from exc
    return parse_response(response, path).result
