"""Running the app under uvicorn: in the foreground (`clipforge serve`) or in a background thread
(tests, benchmarks, notebooks), with connection-level limits set from the request limits."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from clipforge.serve.limits import Limits


def uvicorn_config(app: Any, host: str, port: int, limits: Limits, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn settings that bound what a connection can hold before the app sees it.

    ``limit_concurrency`` caps open connections + tasks well above the app's own admission limit
    (which answers 429 with a JSON body); past it uvicorn answers 503 itself, so even a flood of
    idle connections cannot grow memory without bound.
    """
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on",
        limit_concurrency=4 * (limits.max_concurrency + limits.max_queue) + 64,
        timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024, server_header=False,
    )


class ServerThread:
    """``with ServerThread(app) as server: httpx.get(server.url + "/v1/health")`` on a free loopback port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, limits: Limits = Limits(),
                 log_level: str = "warning"):
        self.server = uvicorn.Server(uvicorn_config(app, host, port, limits, log_level))
        self.thread = threading.Thread(target=self.server.run, name="clipforge-server", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


__all__ = ["ServerThread", "uvicorn_config"]
