"""BackgroundServer: a bridge served from a daemon thread, for tools and tests that embed the server."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, TypeVar

from .bridge import Bridge
from .serve import serve_bridge

START_TIMEOUT_S = 30.0
T = TypeVar("T")


class BackgroundServer:
    """Serves a Bridge on host:port in its own thread and event loop; use as a context manager.

    Example:
        with BackgroundServer(Bridge(load_model(None), BridgeConfig())) as server:
            print(server.url)
    """

    def __init__(self, bridge: Bridge, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.bridge = bridge
        self.host = host
        self.port = port
        self.token = token
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="godot-bridge", daemon=True)

    @property
    def url(self) -> str:
        """The ws:// URL clients connect to."""
        return f"ws://{self.host}:{self.port}/"

    def _main(self) -> None:
        async def body() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(port: int) -> None:
                self.port = port
                self._ready.set()

            await serve_bridge(self.bridge, self.host, self.port, self.token, self._stop, ready)

        try:
            asyncio.run(body())
        except BaseException as e:  # handed to the thread that waits in start()/stop()
            self._error = e
        finally:
            self._ready.set()

    def start(self) -> "BackgroundServer":
        """Start serving; returns once the port is bound (raises what stopped the server otherwise)."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise TimeoutError(f"the bridge did not start within {START_TIMEOUT_S:g} s")
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the server's event loop and return its result (to read bridge state safely)."""
        if self._loop is None:
            raise RuntimeError("the server is not running")

        async def invoke() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout=10)

    def stop(self) -> None:
        """Close every connection and stop the thread; re-raises an error the server died of."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "BackgroundServer":
        return self if self._thread.ident is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
