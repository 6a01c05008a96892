"""How the CLI uses a running server of an environment, when one answers on the configured address.

``llmops ask`` and ``llmops search`` then skip loading torch and the model (about 10 s) and get the
answer from the warm champion; the request is logged like any other.
"""

from __future__ import annotations

import os
from typing import Any

from llmops_dagster.settings import EnvSettings

PING_TIMEOUT_S = 0.5  # a server on loopback answers /health in milliseconds
REQUEST_TIMEOUT_S = 120.0


class ServerError(Exception):
    """The server answered with an error: its message and request id."""


class ServerClient:
    def __init__(self, base_url: str, token: str | None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S)

    def post(self, path: str, payload: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The JSON response and the version that answered."""
        response = self.http.post(path, json=payload)
        body = response.json()
        if response.status_code != 200:
            error = body.get("error") if isinstance(body.get("error"), dict) else body
            raise ServerError(f"{self.base_url}{path} answered {response.status_code}: {error.get('message')} "
                              f"(request {error.get('request_id')})")
        return body, response.headers.get("x-model-version", "")

    def ask(self, question: str, k: int | None) -> tuple[dict[str, Any], str]:
        payload: dict[str, Any] = {"dataframe_records": [{"question": question}]}
        if k:
            payload["params"] = {"k": k}
        body, version = self.post("/invocations", payload)
        return body["predictions"][0], version

    def search(self, query: str, k: int, mode: str) -> dict[str, Any]:
        return self.post("/search", {"query": query, "k": k, "mode": mode})[0]


def running_server(settings: EnvSettings) -> ServerClient | None:
    """A client of the environment's server, if one on its configured address is ready and serves
    this environment's registered model (``/health``)."""
    import httpx

    serving = settings.serving
    host = "127.0.0.1" if serving.host in ("0.0.0.0", "::") else serving.host
    base_url = f"http://{host}:{serving.port}"
    try:
        health = httpx.get(f"{base_url}/health", timeout=PING_TIMEOUT_S)
        ours = health.status_code == 200 and health.json().get("model") == settings.mlflow.registered_model
    except (httpx.HTTPError, ValueError):
        return None
    return ServerClient(base_url, os.environ.get(serving.token_env) or None) if ours else None
