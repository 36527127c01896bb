"""A TCP proxy for outage tests that cuts connections on demand (after asyncpg's _testbase/fuzzer.py).

    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()              # listens on proxy.port (a free loopback port)
    await proxy.go_down()            # existing connections reset, new ones refused
    await proxy.come_up()            # listening again on the same port
    proxy.cut()                      # reset existing connections only (a network glitch)
    proxy.silence = True             # keep connections but forward nothing (a hung peer)
    TcpProxy(..., max_connections=2) # a device that accepts at most 2 connections: more are closed
    await proxy.stop()

It runs in the test's event loop: no threads, no processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class TcpProxy:
    def __init__(
        self, target_host: str, target_port: int, *, listen_port: int = 0, max_connections: int | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port
        self.max_connections = max_connections
        self.open_connections = 0
        self.peak_connections = 0  # most connections open at once
        self.over_limit = 0  # connections closed at once because max_connections were open
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.connections = 0  # accepted so far
        self.refused = 0  # connection attempts while down are refused by the OS; counted on reset
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def silence(self) -> bool:
        return not self._flowing.is_set()

    @silence.setter
    def silence(self, on: bool) -> None:
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    @property
    def up(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self.port == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        await self.come_up()

    async def come_up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def go_down(self) -> None:
        """Stop listening (new connections are refused) and reset every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()
        await asyncio.sleep(0)

    def cut(self) -> None:
        """Reset every open connection (RST, as when a host or the network dies)."""
        for w in list(self._writers):
            transport = w.transport
            with contextlib.suppress(OSError):
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            transport.abort()
        self._writers.clear()
        for t in list(self._pipes):
            t.cancel()

    async def stop(self) -> None:
        await self.go_down()
        if self._pipes:
            await asyncio.wait(self._pipes, timeout=2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.max_connections is not None and self.open_connections >= self.max_connections:
            self.over_limit += 1  # as a PLC with all its connection slots taken: closed at once
            writer.transport.abort()
            return
        self.open_connections += 1
        self.peak_connections = max(self.peak_connections, self.open_connections)
        try:
            await self._serve(reader, writer)
        finally:
            self.open_connections -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
                self._pipes.discard(t)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            return
