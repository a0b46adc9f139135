"""
The "Images" views in the Airflow UI, registered through the ``airflow.plugins`` entry point.

Every Airflow process that loads plugins imports this module (task runners too), so it stays cheap: the
FastAPI app and its dependencies are imported on the api-server's first gallery request, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

URL_PREFIX = "/imagen"


def _ui_root() -> str:
    """
    Return the path the api-server is served under (``[api] base_url``'s path, as Airflow reads it), without ``/``.

    The UI puts an external view's ``href`` in the iframe as it is, so behind a proxy at ``/airflow`` the
    gallery lives at ``/airflow/imagen/...``.
    """
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


RUN_GALLERY = _ui_root() + URL_PREFIX + "/dags/{DAG_ID}/runs/{RUN_ID}/gallery"


class LazyApp:
    """
    An ASGI app that imports the real one (``module:attribute``) when the first request arrives.

    :param target: where the app lives, as ``"package.module:attribute"``.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self._app: Callable[..., Awaitable[None]] | None = None

    def load(self) -> Callable[..., Awaitable[None]]:
        """Return the real app, importing it on the first call."""
        if self._app is None:
            import importlib

            module, _, attribute = self.target.partition(":")
            self._app = getattr(importlib.import_module(module), attribute)
        return self._app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Hand the request to the real app."""
        await self.load()(scope, receive, send)


class ImagenGalleryPlugin(AirflowPlugin):
    """
    A gallery of the images a run generated: an "Images" tab on each DAG run and task instance.

    The tabs are iframes of pages served by the plugin's FastAPI app on the api-server (no JavaScript build),
    and every route of that app checks the user's read access to the DAG's XComs.
    """

    name = "imagen_gallery"
    fastapi_apps = [
        {
            "name": "Imagen gallery",
            "app": LazyApp("airflow_provider_imagen.plugins.app:app"),
            "url_prefix": URL_PREFIX,
        }
    ]
    external_views = [
        {
            "name": "Images",
            "href": RUN_GALLERY,
            "destination": "dag_run",
            "url_route": "imagen-run-images",
        },
        {
            "name": "Images",
            "href": RUN_GALLERY + "?task_id={TASK_ID}&map_index={MAP_INDEX}",
            "destination": "task_instance",
            "url_route": "imagen-task-images",
        },
    ]
