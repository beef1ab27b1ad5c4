"""The Airflow plugin: the Checkpoints page under Browse (registered by the ``airflow.plugins`` entry
point in pyproject.toml, so installing the package is enough; restart the api-server to load it).

The page is a FastAPI app at ``/tf-ckpt`` (see :mod:`airflow_tf_ckpt.ui.app`) shown inside the UI's
iframe at ``/plugin/checkpoints``. The app is built lazily, by the api-server that mounts it: other
components (scheduler, workers) that load plugins only see the class.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/tf-ckpt"


class _LazyApp:
    """An ASGI app that builds the real one on its first request (in the api-server only)."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from airflow_tf_ckpt.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class CheckpointsPlugin(AirflowPlugin):
    name = "tf_ckpt"
    fastapi_apps = [{"app": _LazyApp(), "url_prefix": URL_PREFIX, "name": "TensorFlow checkpoints"}]
    external_views = [
        {
            "name": "Checkpoints",
            "href": "tf-ckpt/",
            "url_route": "checkpoints",
            "destination": "nav",
            "category": "browse",
        }
    ]
