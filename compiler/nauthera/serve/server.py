"""The bundle server: OPA's bundle protocol with long polling, status and decision-log intake, metrics.

One asyncio process holds thousands of idle long polls cheaply: each waiter awaits the current
`asyncio.Event` of its channel, and a watcher replaces and sets that event when the channel moves (a
stat per channel per tick, or an immediate `notify` from an in-process publisher such as the sidecar).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import hmac
import io
import json
import logging
import re
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from nauthera.errors import NautheraError
from nauthera.serve.fleet import AgentRegistry, ChannelState, DecisionLog
from nauthera.store.folder import BundleStore

BUNDLE_MEDIA_TYPE = "application/vnd.openpolicyagent.bundles"
_WAIT = re.compile(r"wait=(\d+)")
_BUNDLE_CACHE_SIZE = 8
log = logging.getLogger("nauthera.server")


@dataclass(frozen=True)
class ServerConfig:
    default_channel: str = "stable"
    token: str | None = None
    stale_after: float = 30.0
    max_wait: float = 300.0
    poll_interval: float = 0.05
    max_agents: int = 100_000
    max_decision_events: int = 100_000
    max_upload_bytes: int = 64 * 1024 * 1024


class Metrics:
    """Prometheus series, in a registry of their own so several servers can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.revisions_published = Counter(
            "nauthera_revisions_published",
            "Revisions that became current on a channel",
            ["channel"],
            registry=self.registry,
        )
        self.compile_failures = Counter(
            "nauthera_compile_failures", "Compiles that failed and were not published", registry=self.registry
        )
        self.bundle_requests = Counter(
            "nauthera_bundle_requests", "Bundle requests by HTTP status", ["code"], registry=self.registry
        )
        self.long_poll_waiters = Gauge(
            "nauthera_long_poll_waiters", "Bundle requests held open", registry=self.registry
        )
        self.agents = Gauge("nauthera_agents", "OPA agents that reported status", registry=self.registry)
        self.stale_agents = Gauge(
            "nauthera_agents_stale", "Agents behind their channel's current revision", registry=self.registry
        )


class ChannelWatcher:
    """Each channel's current revision, and a way to wait until it changes."""

    def __init__(self, store: BundleStore, metrics: Metrics, interval: float) -> None:
        self.store = store
        self.metrics = metrics
        self.interval = interval
        self.states: dict[str, ChannelState] = {}
        self._stamps: dict[str, tuple[int, int, int]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self.closing = False

    def _event(self, channel: str) -> asyncio.Event:
        return self._events.setdefault(channel, asyncio.Event())

    def refresh(self) -> None:
        """Re-read channels whose pointer file changed since the last look (one stat each)."""
        for channel in self.store.channels():
            try:
                stat = self.store.pointer_file(channel).stat()
            except OSError:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if self._stamps.get(channel) == stamp:
                continue
            self._stamps[channel] = stamp
            self.notify(channel)

    def notify(self, channel: str) -> None:
        """Take the channel's revision from the store and wake its waiters if it moved."""
        revision = self.store.channel_revision(channel)
        previous = self.states.get(channel)
        if previous is not None and previous.revision == revision:
            return
        self.states[channel] = ChannelState(revision, time.time())
        if previous is not None or revision is not None:
            self.metrics.revisions_published.labels(channel).inc()
            log.info("channel %s now serves revision %s", channel, revision)
        event = self._events.pop(channel, None)
        if event is not None:
            event.set()

    def release_all(self) -> None:
        """Answer every held long poll now (unchanged: 304) and hold no new ones: the server is stopping,
        and a held poll would keep its connection, and so the process, alive for up to its timeout."""
        self.closing = True
        for event in self._events.values():
            event.set()
        self._events.clear()

    def current(self, channel: str) -> str | None:
        state = self.states.get(channel)
        if state is None:
            self.notify(channel)
            state = self.states.get(channel)
        return state.revision if state else None

    async def wait_for_change(self, channel: str, known: str, timeout: float) -> str | None:
        """The channel's revision once it differs from `known`, or its unchanged revision after `timeout`."""
        deadline = time.monotonic() + timeout
        while self.current(channel) == known and not self.closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.metrics.long_poll_waiters.inc()
            try:
                await asyncio.wait_for(self._event(channel).wait(), remaining)
            except TimeoutError:
                pass
            finally:
                self.metrics.long_poll_waiters.dec()
        return self.current(channel)

    async def run(self) -> None:
        while True:
            try:
                self.refresh()
            except (OSError, NautheraError) as error:
                log.warning("cannot read the store: %s", error)
            await asyncio.sleep(self.interval)


@dataclass
class ServerState:
    store: BundleStore
    config: ServerConfig
    metrics: Metrics = field(default_factory=Metrics)
    readiness: Callable[[], dict[str, Any]] | None = None
    agents: AgentRegistry = field(init=False)
    decisions: DecisionLog = field(init=False)
    watcher: ChannelWatcher = field(init=False)
    _bundles: OrderedDict[str, bytes] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.agents = AgentRegistry(self.config.max_agents, self.config.stale_after)
        self.decisions = DecisionLog(self.config.max_decision_events)
        self.watcher = ChannelWatcher(self.store, self.metrics, self.config.poll_interval)

    def cached_bundle(self, revision: str) -> bytes | None:
        """The bundle if it is in memory: served without a thread hop, as almost every request is."""
        return self._bundles.get(revision)

    def bundle_bytes(self, revision: str) -> bytes:
        """Bundles are immutable per revision, so thousands of agents share one read."""
        if revision in self._bundles:
            self._bundles.move_to_end(revision)
            return self._bundles[revision]
        content: bytes = self.store.bundle_path(revision).read_bytes()
        self._bundles[revision] = content
        while len(self._bundles) > _BUNDLE_CACHE_SIZE:
            self._bundles.popitem(last=False)
        return content

    def agent_report(self) -> list[dict[str, Any]]:
        report = self.agents.describe(self.watcher.states, self.config.default_channel)
        self.metrics.agents.set(len(report))
        self.metrics.stale_agents.set(sum(a["stale"] for a in report))
        return report


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.nauthera
    return state


def _authorized(request: Request) -> bool:
    token = _state(request).config.token
    if token is None:
        return True
    offered = request.headers.get("authorization", "")
    scheme, _, credential = offered.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token.encode())


def _unauthorized() -> Response:
    return JSONResponse(
        {"error": "missing or wrong bearer token"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="nauthera"'},
    )


def _etag(revision: str) -> str:
    return f'"{revision}"'


def _offered_etag(request: Request) -> str | None:
    value = request.headers.get("if-none-match")
    return value.strip().removeprefix("W/").strip('"') if value else None


async def bundle(request: Request) -> Response:
    """GET /bundles/<channel>: ETag = revision, 304 when unchanged, long polling on `Prefer: wait=N`."""
    state = _state(request)
    if not _authorized(request):
        state.metrics.bundle_requests.labels("401").inc()
        return _unauthorized()
    channel = request.path_params["channel"]
    revision = state.watcher.current(channel)
    if revision is None:
        state.metrics.bundle_requests.labels("404").inc()
        return JSONResponse({"error": f"channel {channel!r} has no revision"}, status_code=404)
    offered = _offered_etag(request)
    if offered == revision:
        wait = _WAIT.search(request.headers.get("prefer", ""))
        if wait:
            timeout = min(float(wait.group(1)), state.config.max_wait)
            revision = await state.watcher.wait_for_change(channel, offered, timeout) or revision
        if revision == offered:
            state.metrics.bundle_requests.labels("304").inc()
            return Response(status_code=304, headers={"ETag": _etag(revision)})
    cached = state.cached_bundle(revision)
    body = cached if cached is not None else await asyncio.to_thread(state.bundle_bytes, revision)
    state.metrics.bundle_requests.labels("200").inc()
    return Response(body, media_type=BUNDLE_MEDIA_TYPE, headers={"ETag": _etag(revision)})


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    limit = _state(request).config.max_upload_bytes
    if len(raw) > limit:
        raise ValueError(f"body exceeds {limit} bytes")
    if request.headers.get("content-encoding", "").lower() == "gzip":
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unzipped:
            raw = unzipped.read(limit + 1)
        if len(raw) > limit:
            raise ValueError(f"decompressed body exceeds {limit} bytes")
    return json.loads(raw)


async def status(request: Request) -> Response:
    """POST /status: OPA's status API."""
    state = _state(request)
    if not _authorized(request):
        return _unauthorized()
    try:
        agent = state.agents.record_status(await _json_body(request))
    except (ValueError, OSError) as error:
        return JSONResponse({"error": f"bad status report: {error}"}, status_code=400)
    state.agent_report()
    log.debug("status from %s", agent.id)
    return Response(status_code=204)


async def logs(request: Request) -> Response:
    """POST /logs: OPA's decision logs (gzip'd JSON arrays)."""
    state = _state(request)
    if not _authorized(request):
        return _unauthorized()
    try:
        events = await _json_body(request)
    except (ValueError, OSError) as error:
        return JSONResponse({"error": f"bad decision log upload: {error}"}, status_code=400)
    if not isinstance(events, list):
        return JSONResponse({"error": "decision logs must be a JSON array"}, status_code=400)
    state.decisions.ingest(events)
    return Response(status_code=204)


async def agents(request: Request) -> Response:
    if not _authorized(request):
        return _unauthorized()
    return JSONResponse({"agents": _state(request).agent_report()})


async def decisions(request: Request) -> Response:
    if not _authorized(request):
        return _unauthorized()
    since = request.query_params.get("since")
    try:
        seconds = float(since) if since else None
    except ValueError:
        return JSONResponse({"error": "since must be a number of seconds"}, status_code=400)
    return JSONResponse({"denied": _state(request).decisions.summary(seconds)})


async def channels(request: Request) -> Response:
    if not _authorized(request):
        return _unauthorized()
    states = _state(request).watcher.states
    return JSONResponse(
        {name: {"revision": s.revision, "updated": s.updated} for name, s in sorted(states.items())}
    )


async def healthz(_: Request) -> Response:
    return PlainTextResponse("ok\n")


async def readyz(request: Request) -> Response:
    """Ready once a revision is being served; the detail says what the last compile did."""
    state = _state(request)
    serving = {name: s.revision for name, s in state.watcher.states.items() if s.revision}
    detail: dict[str, Any] = {"serving": serving}
    if state.readiness is not None:
        detail.update(state.readiness())
    ready = bool(serving)
    return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    state = _state(request)
    state.agent_report()
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(state: ServerState) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state.watcher.refresh()
        watcher = asyncio.create_task(state.watcher.run())
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    app = Starlette(
        lifespan=lifespan,
        routes=[
            Route("/bundles/{channel:path}", bundle, methods=["GET"]),
            Route("/status", status, methods=["POST"]),
            Route("/status/{partition:path}", status, methods=["POST"]),
            Route("/logs", logs, methods=["POST"]),
            Route("/logs/{partition:path}", logs, methods=["POST"]),
            Route("/v1/agents", agents, methods=["GET"]),
            Route("/v1/decisions", decisions, methods=["GET"]),
            Route("/v1/channels", channels, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
    )
    app.state.nauthera = state
    return app


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT`, `[::1]:PORT` or `:PORT` (which still binds to localhost, never to all interfaces)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise NautheraError(
            f"--listen {listen!r}: expected HOST:PORT with a port up to 65535, like 127.0.0.1:8282"
        )
    return (host.strip("[]") or "127.0.0.1"), int(port)


def read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise NautheraError(f"{path}: cannot read token file: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise NautheraError(f"{path}: token file is not UTF-8 text ({error.reason})") from error
    if not token:
        raise NautheraError(f"{path}: token file is empty")
    return token


def _raise_open_file_limit() -> None:
    """Each held long poll is a socket; allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _tune_garbage_collector() -> None:
    """Thousands of held long polls are long-lived objects; a full collection walking all of them
    put 40-70 ms into p99 in the benchmarks. Freeze what start-up allocated and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a server coroutine on uvloop (a faster event loop; uvicorn's own choice) when installed."""
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator, part of uvicorn[standard]
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def serve(
    app: Starlette, host: str, port: int, tls_cert: Path | None = None, tls_key: Path | None = None
) -> None:
    """Run the app with uvicorn until cancelled or signalled."""
    listener = _listening_socket(host, port)
    _raise_open_file_limit()
    _tune_garbage_collector()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        access_log=False,
        log_level="warning",
        backlog=4096,
        timeout_keep_alive=75,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    with listener:
        await _ReleasingServer(config, app.state.nauthera).serve(sockets=[listener])


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so a taken port or an unknown host is a clear error (uvicorn would
    log it and exit with its own code)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as error:
        raise NautheraError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        listener.close()
        raise NautheraError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return listener


class _ReleasingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, answer held long polls at once so that shutdown does not wait for them."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        asyncio.get_running_loop().call_soon_threadsafe(self.state.watcher.release_all)
        super().handle_exit(sig, frame)
