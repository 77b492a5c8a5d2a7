"""A small HTTP/1.1 server: one path prefix answered natively, everything else by an ASGI application.

Why not uvicorn: with a thousand agents long-polling, the bundle endpoint is nearly all of the
traffic, and uvicorn spends most of each request on machinery (a task, an ASGI scope, a request and a
response object) that a 304 does not need. Profiled against nginx, `nauthera serve` under uvicorn
answered conditional GETs at a quarter of nginx's rate; a parser callback that writes a prepared
response directly is what closes that gap. The status, log, fleet and metrics endpoints are ordinary
Starlette routes behind a minimal ASGI bridge, where convenience matters more than microseconds.

What it implements: HTTP/1.1 keep-alive with in-order handling of pipelined requests, request bodies
up to a limit (413 beyond), header size limits (431), TLS through `ssl`, the ASGI lifespan protocol, and
a graceful stop on SIGINT/SIGTERM. Slow clients cannot hold the server: a request head must arrive
within `head_timeout` and its body within `body_timeout` (408 otherwise), a connection that does not
read its answers is not given more (its requests wait while its send buffer is full) and is dropped
after `send_timeout`, and an idle keep-alive connection is closed after `idle_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import signal
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools

log = logging.getLogger("nauthera.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: A native handler answers through the reply function (now or later) and, for a request it holds,
#: returns a function that drops it when the client goes away.
Native = Callable[["HttpRequest", Callable[["Reply"], None]], Callable[[], None] | None]

_STATUS = {status.value: f"{status.value} {status.phrase}".encode() for status in HTTPStatus}
_NO_BODY = (204, 304)
#: Response headers the server sets itself; an application's are dropped.
_OWN_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"date"})
#: Bodies at least this long are written after their head rather than copied into one buffer.
_SEPARATE_BODY = 64 * 1024


class Reply:
    """A response: status, headers and body; its status line and headers are encoded once, so a reply
    kept for reuse (the 304 of a revision) costs one concatenation per request."""

    __slots__ = ("_head", "body", "headers", "status")

    def __init__(self, status: int, headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes = b"") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self._head: bytes | None = None

    def wire_head(self) -> bytes:
        """The status line and headers (with content-length where a body may follow), no blank line."""
        if self._head is None:
            lines = [b"HTTP/1.1 " + _STATUS.get(self.status, str(self.status).encode())]
            lines += [name + b": " + value for name, value in self.headers]
            if self.status not in _NO_BODY:
                lines.append(b"content-length: " + str(len(self.body)).encode())
            self._head = b"\r\n".join(lines) + b"\r\n"
        return self._head


@dataclass(frozen=True)
class HttpLimits:
    max_body: int = 64 * 1024 * 1024
    max_head: int = 64 * 1024
    max_pipelined: int = 16
    idle_timeout: float = 75.0
    #: Seconds from a request's first byte to the end of its head (a slowloris sends it byte by byte).
    head_timeout: float = 10.0
    #: Seconds from the end of a request's head to the end of its body.
    body_timeout: float = 60.0
    #: Seconds a client may leave the server's send buffer full (it does not read its answers).
    send_timeout: float = 30.0
    #: Seconds the stop waits for connections to flush their last answers before dropping them.
    stop_grace: float = 1.0


class HttpRequest:
    __slots__ = ("body", "headers", "keep_alive", "method", "target")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.keep_alive = True

    @property
    def path(self) -> bytes:
        return self.target.partition(b"?")[0]


class _Date:
    """The `Date` header, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True).encode()
        return self._value


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, keeps the connection alive."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[HttpRequest] = deque()
        self.current: HttpRequest | None = None
        self.partial: HttpRequest | None = None
        self.head_size = 0
        self.body_size = 0
        self.drop: Callable[[], None] | None = None
        self.last_active = 0.0
        #: When the request being read began (its head) and when its head ended (its body); None: not reading.
        self.head_started: float | None = None
        self.body_started: float | None = None
        #: Since when the send buffer has been full (the client is not reading); None: it is not.
        self.send_blocked: float | None = None
        self.closed = False
        self.paused = False
        self.gone: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.server.connections.add(self)
        self.last_active = self.server.loop_time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.drop is not None:
            self.drop()
            self.drop = None
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)

    def pause_writing(self) -> None:
        self.send_blocked = self.server.loop_time()

    def resume_writing(self) -> None:
        self.send_blocked = None
        if self.current is None:
            self._next()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.server.loop_time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as error:
            # httptools wraps what a callback raises: a request over a limit arrives as its context.
            cause = error.__context__ or error.__cause__
            if isinstance(cause, _RequestTooLargeError):
                self._fail(cause.status, cause.reason)
            else:
                self._fail(400, "malformed HTTP request")
        except _RequestTooLargeError as error:
            self._fail(error.status, error.reason)

    # --- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.partial = HttpRequest()
        self.head_size = 0
        self.body_size = 0
        self.head_started = self.server.loop_time()

    def on_url(self, url: bytes) -> None:
        assert self.partial is not None
        self.partial.target += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.partial is not None
        self.partial.headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def on_headers_complete(self) -> None:
        assert self.partial is not None
        self.partial.method = self.parser.get_method()
        self.partial.keep_alive = self.parser.should_keep_alive()
        self.head_started = None
        self.body_started = self.server.loop_time()

    def on_body(self, body: bytes) -> None:
        assert self.partial is not None
        self.body_size += len(body)
        if self.body_size > self.server.limits.max_body:
            raise _RequestTooLargeError(413, f"request body exceeds {self.server.limits.max_body} bytes")
        self.partial.body.append(body)

    def on_message_complete(self) -> None:
        assert self.partial is not None
        self.queue.append(self.partial)
        self.partial = None
        self.body_started = None
        if len(self.queue) > self.server.limits.max_pipelined and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        if self.current is None:
            self._next()

    # --- answering -----------------------------------------------------------------------------------

    def _next(self) -> None:
        if self.closed or not self.queue or self.send_blocked is not None:
            return  # with a full send buffer, the next answer waits for `resume_writing`
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        request = self.current = self.queue.popleft()
        drop = self.server.dispatch(self, request)
        if self.current is request:  # not answered at once: held, or answered by a task later
            self.drop = drop

    def answer(self, request: HttpRequest, reply: Reply) -> None:
        """Write `reply` to `request` (which must be the one being answered) and go on to the next."""
        if self.closed or request is not self.current:
            return
        self.drop = None
        self.current = None
        self.last_active = self.server.loop_time()
        keep_alive = request.keep_alive and not self.server.stopping
        head = reply.wire_head() + b"date: " + self.server.date.value()
        head += b"\r\n\r\n" if keep_alive else b"\r\nconnection: close\r\n\r\n"
        body = reply.body if request.method != b"HEAD" and reply.status not in _NO_BODY else b""
        assert self.transport is not None
        if len(body) < _SEPARATE_BODY:
            self.transport.write(head + body)
        else:  # a bundle: not copied into one buffer with its head
            self.transport.write(head)
            self.transport.write(body)
        if keep_alive:
            self._next()
        else:
            self.transport.close()

    def overdue(self, now: float) -> str | None:
        """Why the connection should be closed now (a client too slow or gone quiet), or None."""
        limits = self.server.limits
        if self.send_blocked is not None and now - self.send_blocked > limits.send_timeout:
            return "send"
        if self.head_started is not None and now - self.head_started > limits.head_timeout:
            return "head"
        if self.body_started is not None and now - self.body_started > limits.body_timeout:
            return "body"
        idle = self.current is None and self.partial is None and not self.queue
        if idle and now - self.last_active > limits.idle_timeout:
            return "idle"
        return None

    def time_out(self, reason: str) -> None:
        """Close a connection `overdue` gave up on: a request not received in time is answered 408;
        a client that does not read is dropped with what it did not read."""
        if self.transport is None or self.closed:
            return
        if reason == "send":
            self.transport.abort()
        elif reason in ("head", "body") and self.current is None:
            self._fail(408, f"request {reason} not received within the time limit")
        else:
            self.transport.close()

    def _fail(self, status: int, reason: str) -> None:
        """Answer a request that cannot be parsed, then close (its end cannot be found)."""
        if self.transport is None or self.closed:
            return
        body = f'{{"error": "{reason}"}}'.encode()
        head = (
            b"HTTP/1.1 "
            + _STATUS[status]
            + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()

    def _count_head(self, size: int) -> None:
        self.head_size += size
        if self.head_size > self.server.limits.max_head:
            raise _RequestTooLargeError(431, "request head too large")

    def disconnected(self) -> asyncio.Future[None]:
        if self.gone is None:
            self.gone = asyncio.get_running_loop().create_future()
            if self.closed:
                self.gone.set_result(None)
        return self.gone


class _RequestTooLargeError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HttpServer:
    """Serves `native` for GET/HEAD requests under `prefix`, and `app` (ASGI) for everything else."""

    def __init__(
        self,
        app: AsgiApp,
        prefix: bytes,
        native: Native,
        limits: HttpLimits | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.on_stop = on_stop
        self.prefix = prefix
        self.native = native
        self.limits = limits or HttpLimits()
        self.connections: set[_Connection] = set()
        self.date = _Date()
        self.stopping = False
        self.tls = False
        self.loop_time: Callable[[], float] = time.monotonic

    def dispatch(self, connection: _Connection, request: HttpRequest) -> Callable[[], None] | None:
        def reply(answer: Reply) -> None:
            connection.answer(request, answer)

        if request.method in (b"GET", b"HEAD") and request.target.startswith(self.prefix):
            return self.native(request, reply)
        task = asyncio.ensure_future(self._asgi(connection, request))

        def cancel() -> None:
            task.cancel()

        return cancel

    async def _asgi(self, connection: _Connection, request: HttpRequest) -> None:
        assert connection.transport is not None
        path, _, query = request.target.partition(b"?")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method.decode("latin-1"),
            "scheme": "https" if self.tls else "http",
            "path": unquote(path.decode("latin-1"), encoding="utf-8", errors="replace"),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": connection.transport.get_extra_info("peername"),
            "server": connection.transport.get_extra_info("sockname"),
        }
        body_sent = False
        status, headers, chunks = 500, [], []

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": b"".join(request.body), "more_body": False}
            await connection.disconnected()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", ())]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        try:
            await self.app(scope, receive, send)
        except Exception:  # an application bug must not take the connection's other requests down
            log.exception("error answering %s %s", scope["method"], scope["path"])
            status, headers = 500, [(b"content-type", b"application/json")]
            chunks = [b'{"error": "internal server error"}']
        kept = tuple((k, v) for k, v in headers if k not in _OWN_HEADERS)
        connection.answer(request, Reply(status, kept, b"".join(chunks)))

    async def serve(self, listener: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        """Serve on the bound `listener` until cancelled or signalled (SIGINT/SIGTERM); the ASGI lifespan
        brackets it. At the stop, `on_stop` answers what native handlers hold (held long polls) before
        the connections close, which flushes those answers."""
        loop = asyncio.get_running_loop()
        self.loop_time = loop.time
        self.tls = tls is not None
        lifespan = _Lifespan(self.app)
        await lifespan.startup()
        server = await loop.create_server(lambda: _Connection(self), sock=listener, ssl=tls, backlog=4096)
        stop = asyncio.Event()
        handled = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
                handled.append(signum)
        sweeper = asyncio.ensure_future(self._sweep())
        try:
            await stop.wait()
        finally:
            sweeper.cancel()
            self.stopping = True
            if self.on_stop is not None:
                self.on_stop()
            server.close()
            await self._close_connections()
            for signum in handled:
                loop.remove_signal_handler(signum)
            await lifespan.shutdown()

    async def _close_connections(self) -> None:
        """Close every connection, letting each flush its last answers for `stop_grace` seconds; a
        client that does not read them (or an upload still arriving) is then dropped."""
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        deadline = self.loop_time() + self.limits.stop_grace
        while self.connections and self.loop_time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()

    async def _sweep(self) -> None:
        """Close connections that are `overdue` (one sweep a quarter of the shortest timeout, at most
        every second, instead of a timer per request)."""
        limits = self.limits
        shortest = min(limits.idle_timeout, limits.head_timeout, limits.body_timeout, limits.send_timeout)
        while True:
            await asyncio.sleep(min(shortest / 4, 1.0))
            now = self.loop_time()
            for connection in list(self.connections):
                reason = connection.overdue(now)
                if reason is not None:
                    log.log(
                        logging.DEBUG if reason == "idle" else logging.INFO, "%s timeout: closing", reason
                    )
                    connection.time_out(reason)


class _Lifespan:
    """The ASGI lifespan protocol: startup before serving, shutdown after."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.ensure_future(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        answer = await self.outbox.get()
        if answer["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"application start-up failed: {answer.get('message', answer['type'])}")

    async def shutdown(self) -> None:
        if self.task is None:
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(asyncio.CancelledError):
            await self.outbox.get()
            await self.task
