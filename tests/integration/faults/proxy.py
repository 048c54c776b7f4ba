"""A TCP proxy on loopback between clients and a broker that can cut every connection.

The broker must advertise the proxy's address (else clients, told by metadata
where the broker is, would go round the proxy): start it with
`advertised.listeners` pointing here. While the proxy is down it accepts
connections and closes them at once, as a broker behind a failed network would
look to librdkafka: connections that open and die.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self

from worker.embedded.base import LOOPBACK

# Bytes read per chunk while forwarding: a Kafka fetch response is read in a few.
CHUNK_BYTES = 65536
START_TIMEOUT_S = 10.0


class FlakyProxy:
    """Forwards `LOOPBACK:port` to `LOOPBACK:target_port`; `cut()` and `restore()` the link."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self._target_port = target_port
        self._down = False
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="flaky-proxy", daemon=True)

    def start(self) -> Self:
        """Listen, in a thread of its own."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the proxy did not start listening on {LOOPBACK}:{self.port}")
        return self

    def cut(self) -> None:
        """Drop every open connection, and every new one until `restore()`."""
        self._loop.call_soon_threadsafe(self._cut)

    def restore(self) -> None:
        """Forward again."""
        self._loop.call_soon_threadsafe(self._restore)

    def stop(self) -> None:
        """Close everything and end the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, LOOPBACK, self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._cut()
            # The connections' tasks end once their sockets are aborted.
            pending = asyncio.all_tasks(self._loop)
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def _cut(self) -> None:
        self._down = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def _restore(self) -> None:
        self._down = False

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if self._down:
            client.transport.abort()
            return
        try:
            broker_reader, broker = await asyncio.open_connection(LOOPBACK, self._target_port)
        except OSError:
            client.transport.abort()
            return
        if self._down:  # cut while connecting
            client.transport.abort()
            broker.transport.abort()
            return
        self._writers |= {client, broker}
        await asyncio.gather(self._pipe(client_reader, broker), self._pipe(broker_reader, client))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
