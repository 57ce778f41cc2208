"""`python -m godot_bridge.serve`: stream a model's characters to Godot over websockets (protocol v1)."""
from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import signal
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from runtime.model import PRECISIONS, ModelError, load_model

from . import protocol as P
from .bridge import Bridge, BridgeConfig

log = logging.getLogger("godot_bridge")

EXAMPLES = """examples:
  python -m godot_bridge.serve                                  # the shipped default model on 127.0.0.1:8765
  python -m godot_bridge.serve --model runs/walk/model --max-clients 4 --characters-per-client 2
  python -m godot_bridge.serve --lockstep --port 0              # a frame per step request; print the free port
  python -m godot_bridge.serve --model models/walk --precision int8   # the int8 step graph
  python -m godot_bridge.serve --host 0.0.0.0 --token s3cret    # reachable from the LAN: a token is required

Godot clients connect to ws://HOST:PORT/ (ws://HOST:PORT/?token=T when --token is set).
The wire format is godot_bridge/PROTOCOL.md; the Godot addon is godot_bridge/addons/motion_vae.
"""
TOKEN_ENV = "MOTIONVAE_BRIDGE_TOKEN"
PING_INTERVAL_S = 10.0  # keepalive: a peer that stops answering pings is dropped after ~20 s
PING_TIMEOUT_S = 10.0
WRITE_LIMIT_BYTES = 65536  # per-connection send buffer; past it a slow client's frames are dropped


def _positive(limit: int):
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be between 1 and {limit}, got {value}")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked; bad arguments exit with code 2 and one line."""
    ap = _Parser(prog="python -m godot_bridge.serve", description=__doc__,
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped default model)")
    ap.add_argument("--precision", choices=PRECISIONS, default="float32",
                    help="the model's step graph: float32, or int8 (faster; needs decoder-int8.onnx in the model "
                         "directory) (default %(default)s)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    ap.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    ap.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                    help=f"shared secret clients pass as ?token=T in the URL (default: ${TOKEN_ENV}, which "
                         "unlike the command line is not visible to other users)")
    ap.add_argument("--max-clients", type=_positive(1024), default=8, help="connections served at once (default 8)")
    ap.add_argument("--characters-per-client", type=_positive(256), default=4,
                    help="characters each client may spawn (default 4)")
    ap.add_argument("--lockstep", action="store_true",
                    help="step only when every client with characters has sent a step request")
    ap.add_argument("--max-message-bytes", type=_positive(1 << 24), default=65536,
                    help="largest client message accepted; a bigger one closes that connection (default 65536)")
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        ap.error(f"--port must be between 0 and 65535, got {args.port}")
    if args.token == "":
        ap.error("--token must not be empty")
    if not P.is_loopback(args.host) and args.token is None:
        ap.error(f"binding to {args.host} exposes the server beyond this machine: give --token too")
    if args.max_clients * args.characters_per_client > P.MAX_U16:
        ap.error(f"--max-clients x --characters-per-client must be at most {P.MAX_U16}")
    return args


class Server:
    """The websockets side: token check, one handler task per connection, frames pumped per client."""

    def __init__(self, bridge: Bridge, token: str | None) -> None:
        self.bridge = bridge
        self.token = token

    def check_token(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the HTTP upgrade (401) when a token is required and the URL's token is missing or wrong."""
        if self.token is None:
            return None
        given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        if hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")

    async def handle(self, ws: ServerConnection) -> None:
        """Serve one connection until it closes; its characters and tasks go with it."""
        client = self.bridge.connect(ws.send)
        if client is None:
            await ws.send(P.encode_error("server_full", f"the server already serves {self.bridge.config.max_clients} "
                                                        "clients; try again later"))
            await ws.close(1013, "server full")
            return
        log.info("client %d connected from %s (slots %d..%d)", client.number, ws.remote_address,
                 client.block * len(client.spawned), (client.block + 1) * len(client.spawned) - 1)
        pump = asyncio.create_task(client.pump())
        try:
            await ws.send(self.bridge.hello())
            async for message in ws:
                reply = self.bridge.handle(client, message)
                if reply is not None:
                    await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)  # a send that failed is no news here
            self.bridge.disconnect(client)
            log.info("client %d gone (%s; %d frames sent, %d dropped)", client.number,
                     ws.close_code if ws.close_code is not None else "no close code",
                     client.frames_sent, client.frames_dropped)


async def serve_bridge(bridge: Bridge, host: str, port: int, token: str | None, stop: asyncio.Event,
                       on_ready: Callable[[int], None]) -> None:
    """Serve bridge on host:port until stop is set; on_ready gets the bound port. Raises OSError if it cannot bind."""
    server = Server(bridge, token)
    async with serve(server.handle, host, port, process_request=server.check_token, compression=None,
                     max_size=bridge.config.max_message_bytes, max_queue=16, write_limit=WRITE_LIMIT_BYTES,
                     ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S) as ws_server:
        on_ready(ws_server.sockets[0].getsockname()[1])
        ticker = asyncio.create_task(bridge.run())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ticker, stopped}, return_when=asyncio.FIRST_COMPLETED)
        ticker.cancel()
        stopped.cancel()
        if not ticker.cancelled() and ticker.done():
            ticker.result()  # the tick loop never ends by itself: re-raise what killed it
    # Leaving the context closed every connection with 1001 (going away).


async def run(args: argparse.Namespace) -> int:
    """Load the model, serve until SIGINT/SIGTERM, then close every connection cleanly."""
    try:
        model = load_model(args.model, precision=args.precision)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bridge = Bridge(model, BridgeConfig(args.max_clients, args.characters_per_client, args.lockstep,
                                        args.max_message_bytes))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mode = "lockstep" if args.lockstep else f"{model.fps:g} fps"

    def ready(port: int) -> None:
        print(f"serving {model.name!r} ({model.precision}) on ws://{args.host}:{port}/ ({args.max_clients} clients x "
              f"{args.characters_per_client} characters, {mode}); Ctrl-C stops", flush=True)

    try:
        await serve_bridge(bridge, args.host, args.port, args.token, stop, ready)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port} ({e.strerror or e})", file=sys.stderr)
        return 2
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
