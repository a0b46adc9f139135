"""
The way out for image downloads: the connection's proxy and CAs, and no proxy resolving a host for us.

An image URL comes from an API answer: untrusted. :func:`~airflow_provider_imagen._task.download.check_image_url`
refuses a host whose addresses here are not public, before each hop. Through a proxy that is not enough: the proxy
resolves the host itself, so a name this machine cannot resolve (``wiki.corp``, say) could reach an internal address
from the proxy's side. Such a host is refused before the request, unless an admin listed it in
``[imagen] allowed_image_hosts``. (A name that resolves to public addresses here and to internal ones at the proxy,
split-horizon DNS, is not caught: the proxy's own policy is the place for that.)
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

from airflow_provider_imagen._cloudflare.network import for_api

if TYPE_CHECKING:
    import httpx

    from airflow_provider_imagen._cloudflare.network import RoutingTransport


def image_transport(api_host: str | None) -> RoutingTransport:
    """
    Return the transport of an image client: routed and trusted as the connection of the API at ``api_host`` is.

    :param api_host: the API's ``host:port`` (the connection's network was noted when the task read it); without
        one, the environment's proxies and the default CAs.
    """
    return for_api(api_host).transport(before_proxy=refuse_unresolvable)


def refuse_unresolvable(url: httpx.URL) -> None:
    """
    Refuse to send a request for ``url`` through a proxy when its host does not resolve on this machine.

    :raises ImageDownloadError: naming the host, before any connection.
    """
    from airflow_provider_imagen._task.download import allowed_image_hosts
    from airflow_provider_imagen.exceptions import ImageDownloadError

    host = url.host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        return  # an address: check_image_url judged it already
    except ValueError:
        pass
    if host in allowed_image_hosts():
        return
    try:
        socket.getaddrinfo(host, url.port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ImageDownloadError(
            f"refusing to download the image from {host} through the proxy: this machine cannot resolve it, so "
            "it could not check that the proxy would not reach an internal address; list the host in "
            "[imagen] allowed_image_hosts to allow it"
        ) from None
