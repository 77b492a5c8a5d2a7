"""The bundle server: OPA's bundle protocol with long polling and deltas, status and decision logs, metrics.

`GET /bundles/<channel>` is answered natively by `serve.bundles` over `serve.http` (the path thousands
of agents hit); the other endpoints are Starlette routes. Long polls wait for the channel to move: a
watcher polls each channel's stamp (a pointer file's stat, a registry tag's digest) every
`poll_interval` (at least the store's own), and an in-process publisher (the
sidecar) announces its revisions directly, with the bundle and its data tree, so nothing is read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import io
import json
import logging
import re
import resource
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from nauthera.errors import NautheraError
from nauthera.serve.bundles import (
    BundleRequest,
    BundleService,
    ChannelWatcher,
    bearer_matches,
    on_loop,
)
from nauthera.serve.fleet import AgentRegistry, DecisionLog
from nauthera.serve.http import HttpLimits, HttpRequest, HttpServer, Reply
from nauthera.store.base import BundleStore
from nauthera.targets.opa.delta import BundleState

BUNDLES_PREFIX = b"/bundles/"
#: Distinct bundle requests (target and headers) kept parsed.
_PARSED_KEPT = 4096
#: Largest request (target and headers) kept parsed: 4,096 of them then take at most 16 MiB.
_PARSED_HEAD = 4096
log = logging.getLogger("nauthera.server")


@dataclass(frozen=True)
class ServerConfig:
    """What the server serves and the limits that keep it up under any client (README "Limits")."""

    default_channel: str = "stable"
    token: str | None = None
    stale_after: float = 30.0
    max_wait: float = 300.0
    poll_interval: float = 0.05
    max_agents: int = 100_000
    #: Memory the agent registry may take (an estimate of its texts); the least recent agents go first.
    max_agent_bytes: int = 128 * 1024 * 1024
    max_decision_events: int = 100_000
    #: Largest request body, and largest decompressed decision-log upload.
    max_upload_bytes: int = HttpLimits.max_body
    #: Largest status report, compressed or not (OPA's are a few kilobytes).
    max_status_bytes: int = 1024 * 1024
    #: Deepest nesting of arrays and objects in a JSON body.
    max_json_depth: int = 64
    head_timeout: float = HttpLimits.head_timeout
    body_timeout: float = HttpLimits.body_timeout
    idle_timeout: float = HttpLimits.idle_timeout
    send_timeout: float = HttpLimits.send_timeout


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
        self.push_failures = Counter(
            "nauthera_push_failures",
            "Rounds of push mode (--push-to) that could not load the OPA",
            registry=self.registry,
        )
        self.bundle_requests = Counter(
            "nauthera_bundle_requests", "Bundle requests by HTTP status", ["code"], registry=self.registry
        )
        self.deltas = Counter(
            "nauthera_bundle_deltas",
            "Bundle requests answered with a delta bundle rather than the whole bundle",
            registry=self.registry,
        )
        self.long_poll_waiters = Gauge(
            "nauthera_long_poll_waiters", "Bundle requests held open", registry=self.registry
        )
        self.agents = Gauge("nauthera_agents", "OPA agents that reported status", registry=self.registry)
        self.stale_agents = Gauge(
            "nauthera_agents_stale", "Agents behind their channel's current revision", registry=self.registry
        )
        self.store_faults = Counter(
            "nauthera_store_faults",
            "Times a channel could not move: unreadable pointer, missing or corrupt revision",
            registry=self.registry,
        )
        self.faulty_channels = Gauge(
            "nauthera_channels_faulty",
            "Channels serving their last good revision because the store's is unusable",
            registry=self.registry,
        )
        self._requests: dict[str, Any] = {}

    def count_request(self, code: str) -> None:
        counter = self._requests.get(code)
        if counter is None:
            counter = self._requests[code] = self.bundle_requests.labels(code)
        counter.inc()


@dataclass
class ServerState:
    store: BundleStore
    config: ServerConfig
    metrics: Metrics = field(default_factory=Metrics)
    readiness: Callable[[], dict[str, Any]] | None = None
    agents: AgentRegistry = field(init=False)
    decisions: DecisionLog = field(init=False)
    watcher: ChannelWatcher = field(init=False)
    bundles: BundleService = field(init=False)
    _parsed: dict[tuple[bytes, tuple[tuple[bytes, bytes], ...]], BundleRequest] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.agents = AgentRegistry(
            self.config.max_agents, self.config.stale_after, max_bytes=self.config.max_agent_bytes
        )
        self.decisions = DecisionLog(self.config.max_decision_events)
        self.watcher = ChannelWatcher(
            self.store,
            self._moved,
            max(self.config.poll_interval, self.store.poll_interval),
            self._servable,
            self._fault,
        )
        self.bundles = BundleService(
            self.store,
            self.config.token,
            self.config.max_wait,
            self.metrics.count_request,
            self.metrics.deltas.inc,
        )
        self.metrics.long_poll_waiters.set_function(lambda: self.watcher.held)
        self.metrics.faulty_channels.set_function(lambda: len(self.watcher.faults))

    def _servable(self, revision: str) -> None:
        """Read and verify a revision a channel moves to (StoreError if it cannot be served); its bundle
        is then in memory for the requests that follow. The watcher checks from a worker thread, and
        the bundle caches belong to the event loop, so the offer is made there."""
        on_loop(self.watcher.loop, self.bundles.offer, revision, self.store.verified_bundle(revision))

    def _fault(self, channel: str, problem: str) -> None:
        del channel, problem
        self.metrics.store_faults.inc()

    def _moved(self, channel: str, revision: str | None) -> None:
        self.metrics.revisions_published.labels(channel).inc()
        log.info("channel %s now serves revision %s", channel, revision)

    def announce(self, channel: str, revision: str, content: bytes, state: BundleState) -> None:
        """An in-process publisher moved `channel` to `revision`: keep its bundle and data tree, and
        answer the channel's long polls (from any thread)."""

        def on_the_loop() -> None:
            self.bundles.offer(revision, content, state)
            self.watcher.notify(channel, checked=True)

        on_loop(self.watcher.loop, on_the_loop)

    def agent_report(self) -> list[dict[str, Any]]:
        report = self.agents.describe(self.watcher.states, self.config.default_channel)
        self.metrics.agents.set(len(report))
        self.metrics.stale_agents.set(sum(a["stale"] for a in report))
        return report

    def answer_bundle(
        self, request: HttpRequest, reply: Callable[[Reply], None]
    ) -> Callable[[], None] | None:
        """GET /bundles/<channel> (see `serve.bundles`). An agent asks the same thing every time, so
        parsed requests are kept by their exact target and headers."""
        key = (request.target, tuple(request.headers))
        parsed = self._parsed.get(key)
        if parsed is None:
            channel = unquote(request.path[len(BUNDLES_PREFIX) :].decode("latin-1"))
            parsed = BundleRequest.parse(channel, dict(request.headers), self.config.max_wait)
            if len(self._parsed) >= _PARSED_KEPT:
                self._parsed.clear()
            if len(request.target) + sum(len(n) + len(v) for n, v in request.headers) <= _PARSED_HEAD:
                self._parsed[key] = parsed  # an agent's request; a huge one is not kept
        return self.bundles.handle(self.watcher, parsed, reply)


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.nauthera
    return state


def _authorized(request: Request) -> bool:
    return bearer_matches(request.headers.get("authorization"), _state(request).config.token)


def _unauthorized() -> Response:
    return JSONResponse(
        {"error": "missing or wrong bearer token"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="nauthera"'},
    )


#: JSON strings (skipped by the depth scan: brackets inside them do not nest).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST_PAIRS = re.compile(rb"[\[{][\]}]")


def parse_json(raw: bytes, max_depth: int) -> Any:
    """`json.loads`, refusing (ValueError) a document nested deeper than `max_depth` before parsing it,
    so hostile nesting never reaches the decoder's recursion (nor anything that walks the result)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        brackets, removed = _INNERMOST_PAIRS.subn(b"", brackets)
        if not removed:  # all paired (or what is left cannot pair: the decoder will say so)
            break
    if brackets and _INNERMOST_PAIRS.search(brackets):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except RecursionError:  # unbalanced brackets the scan could not pair
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None


async def _json_body(request: Request, limit: int) -> Any:
    """The request's JSON (gzip'd or not), at most `limit` bytes before and after decompression."""
    raw = await request.body()
    if len(raw) > limit:
        raise _TooLargeError(f"body exceeds {limit} bytes")
    if request.headers.get("content-encoding", "").lower() == "gzip":
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unzipped:
            raw = unzipped.read(limit + 1)
        if len(raw) > limit:
            raise _TooLargeError(f"decompressed body exceeds {limit} bytes")
    return parse_json(raw, _state(request).config.max_json_depth)


class _TooLargeError(ValueError):
    """A body beyond its limit: 413."""


def _bad_body(what: str, error: Exception) -> Response:
    code = 413 if isinstance(error, _TooLargeError) else 400
    return JSONResponse({"error": f"bad {what}: {error}"}, status_code=code)


async def status(request: Request) -> Response:
    """POST /status: OPA's status API."""
    state = _state(request)
    if not _authorized(request):
        return _unauthorized()
    try:
        agent = state.agents.record_status(await _json_body(request, state.config.max_status_bytes))
    except (ValueError, OSError, EOFError) as error:
        return _bad_body("status report", error)
    # The agent gauges are set when /metrics or /v1/agents describes the fleet: describing every agent
    # on every report made 200 reports/s from 1,000 agents cost 200,000 descriptions a second.
    log.debug("status from %s", agent.id)
    return Response(status_code=204)


async def logs(request: Request) -> Response:
    """POST /logs: OPA's decision logs (gzip'd JSON arrays)."""
    state = _state(request)
    if not _authorized(request):
        return _unauthorized()
    try:
        events = await _json_body(request, state.config.max_upload_bytes)
    except (ValueError, OSError, EOFError) as error:
        return _bad_body("decision log upload", error)
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
    detail: dict[str, Any] = {"serving": serving, "faults": dict(sorted(state.watcher.faults.items()))}
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
    """Run a server coroutine on uvloop (a faster event loop) when installed."""
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise NautheraError(f"cannot load --tls-cert {cert} / --tls-key {key}: {error}") from error
    return context


async def serve(
    app: Starlette, host: str, port: int, tls_cert: Path | None = None, tls_key: Path | None = None
) -> None:
    """Serve `app` (from `create_app`, perhaps with more routes) until cancelled or signalled; at
    SIGTERM/SIGINT every held long poll is answered before the connections close."""
    listener = _listening_socket(host, port)
    _raise_open_file_limit()
    _tune_garbage_collector()
    tls = _tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
    state: ServerState = app.state.nauthera
    config = state.config
    limits = HttpLimits(
        max_body=config.max_upload_bytes,
        idle_timeout=config.idle_timeout,
        head_timeout=config.head_timeout,
        body_timeout=config.body_timeout,
        send_timeout=config.send_timeout,
    )
    server = HttpServer(app, BUNDLES_PREFIX, state.answer_bundle, limits, on_stop=state.watcher.release_all)
    with listener:
        await server.serve(listener, tls)


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bind before serving, so a taken port or an unknown host is a clear error."""
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
