"""OPA's bundle protocol: `GET /bundles/<channel>` with ETags, long polling and delta bundles.

This is the hot path of a server with thousands of agents, so it is written against plain callbacks,
not a web framework: a request is answered at once when it can be (a 304, or a bundle already in
memory), a held long poll is an entry in a list with a timer (no task per request), and what needs the
disk or a computation (a bundle read, the data tree of a revision, a delta) is done once, off the
event loop, and shared by every request waiting for it.

An agent that opts in to deltas (the `Nauthera-Delta-Bundles: on` header, set in its service's
`headers`), whose `If-None-Match` names a revision the server can read and whose `Prefer` header offers
`delta` gets a delta bundle from that revision to the channel's. Deltas are opt-in because OPA offers
`delta` in every request, yet refuses to activate one when its bundle has `persist: true` (and then
stays on its old revision for good). An agent with no ETag (a fresh or restarted OPA), an unknown
revision, or a bundle that cannot be patched (signed, or with other Rego) gets the snapshot, as does one
for whom the delta would not be smaller.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from nauthera.errors import NautheraError
from nauthera.serve.fleet import ChannelState
from nauthera.serve.http import Reply
from nauthera.store.base import BundleStore, check_channel_name
from nauthera.targets.opa.bundle import bundle_entries, is_revision_id
from nauthera.targets.opa.datatree import DataNode, nodes_by_digest
from nauthera.targets.opa.delta import BundleState, bundle_state, delta_bundle, patch_operations

BUNDLE_MEDIA_TYPE = b"application/vnd.openpolicyagent.bundles"
_WAIT = re.compile(r"wait=(\d+)")
_MODES = re.compile(r"modes=([a-z,]+)")
#: The request header by which an agent asks for delta bundles (value `on`): see the module docstring.
DELTA_OPT_IN = b"nauthera-delta-bundles"
#: Revisions whose bundle bytes, data trees and deltas are kept in memory.
SNAPSHOTS_KEPT = 8
STATES_KEPT = 8
DELTAS_KEPT = 32
log = logging.getLogger("nauthera.server")
T = TypeVar("T")


def json_reply(status: int, document: Any, *headers: tuple[bytes, bytes]) -> Reply:
    return Reply(status, ((b"content-type", b"application/json"), *headers), json.dumps(document).encode())


@dataclass(frozen=True, slots=True)
class BundleRequest:
    channel: str
    #: The revision the agent holds (`If-None-Match` without quotes or `W/`); None without one.
    etag: str | None
    #: Seconds to hold the request while nothing changes (`Prefer: wait=N`, capped); None: no wait.
    wait: float | None
    #: Whether the agent opted in to deltas and `Prefer: modes=...` offers `delta`.
    delta: bool
    authorization: str | None = None

    @classmethod
    def parse(cls, channel: str, headers: dict[bytes, bytes], max_wait: float) -> BundleRequest:
        etag = headers.get(b"if-none-match")
        prefer = headers.get(b"prefer", b"").decode("latin-1")
        wait, modes = _WAIT.search(prefer), _MODES.search(prefer)
        authorization = headers.get(b"authorization")
        return cls(
            channel,
            etag.decode("latin-1").strip().removeprefix("W/").strip('"') or None if etag else None,
            min(float(wait.group(1)), max_wait) if wait else None,
            bool(
                modes
                and "delta" in modes.group(1).split(",")
                and headers.get(DELTA_OPT_IN, b"").strip().lower() == b"on"
            ),
            authorization.decode("latin-1") if authorization is not None else None,
        )


def bearer_matches(offered: str | None, token: str | None) -> bool:
    """Whether `Authorization` carries the bearer token (compared in constant time); no token: yes."""
    if token is None:
        return True
    scheme, _, credential = (offered or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token.encode())


class _Cache:
    """A bounded map whose values are computed once however many requests ask for them at once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Future[Any]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def get(self, key: Hashable) -> Any:
        self._values.move_to_end(key)
        return self._values[key]

    def put(self, key: Hashable, value: Any) -> None:
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.size:
            self._values.popitem(last=False)

    def values(self) -> list[Any]:
        return list(self._values.values())

    async def compute(self, key: Hashable, work: Callable[[], Awaitable[Any]]) -> Any:
        if key in self._values:
            return self.get(key)
        if key not in self._pending:
            self._pending[key] = asyncio.ensure_future(self._fill(key, work))
        return await asyncio.shield(self._pending[key])

    async def _fill(self, key: Hashable, work: Callable[[], Awaitable[Any]]) -> Any:
        try:
            value = await work()
            self.put(key, value)
            return value
        finally:
            del self._pending[key]


@dataclass(eq=False)
class _Waiter:
    callback: Callable[[str | None], None]
    timer: asyncio.TimerHandle | None = None
    done: bool = False


class ChannelWatcher:
    """Each channel's current revision, and the long polls waiting for it to move.

    A channel moves only to a revision `check` accepts (the server reads and verifies its bundle);
    while its pointer is unreadable or names a revision that is missing or corrupt, the channel keeps
    its last good revision and the problem is kept in `faults` (shown by /readyz and /metrics) until
    the pointer moves to a good one.
    """

    def __init__(
        self,
        store: BundleStore,
        on_move: Callable[[str, str | None], None],
        interval: float,
        check: Callable[[str], None] | None = None,
        on_fault: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.on_move = on_move
        self.interval = interval
        self.check = check
        self.on_fault = on_fault
        self.faults: dict[str, str] = {}
        self.states: dict[str, ChannelState] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stamps: dict[str, Hashable] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self.held = 0
        self.closing = False

    def changes(self) -> list[tuple[str, str | None, str | None]]:
        """Channels whose stamp changed since the last look, each with `read`'s answer (a stat per
        channel in a folder, a HEAD per channel tag in a registry): blocking I/O, run off the event loop."""
        moved = []
        for channel, stamp in self.store.channel_stamps().items():
            if self._stamps.get(channel) != stamp:
                self._stamps[channel] = stamp
                moved.append((channel, *self.read(channel)))
        return moved

    def read(self, channel: str, checked: bool = False) -> tuple[str | None, str | None]:
        """(the channel's revision, None), once `check` accepts it (unless the caller has `checked` it);
        or (None, the problem) while its pointer is unreadable or names a missing or corrupt revision."""
        previous = self.states.get(channel)
        try:
            revision = self.store.channel_revision(channel)
            known = previous.revision if previous else None
            if revision is not None and revision != known and not checked and self.check is not None:
                self.check(revision)
        except (NautheraError, OSError) as error:
            return None, str(error)
        return revision, None

    def refresh(self) -> None:
        for channel, revision, problem in self.changes():
            self.moved(channel, revision, problem)

    def notify(self, channel: str, checked: bool = False) -> None:
        """Take the channel's revision from the store and answer its waiters if it moved."""
        self.moved(channel, *self.read(channel, checked))

    def moved(self, channel: str, revision: str | None, problem: str | None = None) -> None:
        """Record the channel's revision and answer its waiters if it moved (on the event loop); with a
        `problem`, keep the last good revision and record the fault until the channel reads well."""
        previous = self.states.get(channel)
        if problem is not None:
            if self.faults.get(channel) != problem:
                self.faults[channel] = problem
                log.error(
                    "channel %s: %s; still serving %s", channel, problem, previous and previous.revision
                )
                if self.on_fault is not None:
                    self.on_fault(channel, problem)
            return
        self.faults.pop(channel, None)
        if (previous.revision if previous else None) == revision:
            return
        self.states[channel] = ChannelState(revision, time.time())
        self.on_move(channel, revision)
        for waiter in self._waiters.pop(channel, []):
            self._release(waiter, revision)

    def notify_threadsafe(self, channel: str) -> None:
        """`notify` from any thread (the sidecar compiles in one): it runs on the event loop."""
        on_loop(self.loop, self.notify, channel)

    def current(self, channel: str) -> str | None:
        state = self.states.get(channel)
        if state is None:
            try:
                check_channel_name(channel)
            except NautheraError:  # not a channel name the store accepts
                return None
            self.notify(channel)
            state = self.states.get(channel)
        return state.revision if state else None

    def hold(
        self, channel: str, timeout: float, callback: Callable[[str | None], None]
    ) -> Callable[[], None]:
        """Call `callback` with the channel's new revision when it moves, or with None after `timeout`
        seconds; return a function that drops the waiter (the client went away)."""
        if self.closing:
            callback(None)
            return _nothing
        loop = asyncio.get_running_loop()
        waiter = _Waiter(callback)
        self._waiters.setdefault(channel, []).append(waiter)
        self.held += 1
        waiter.timer = loop.call_later(timeout, self._expire, channel, waiter)

        def drop() -> None:
            if not waiter.done:
                self._finish(waiter)
                self._waiters.get(channel, []).remove(waiter)

        return drop

    def release_all(self) -> None:
        """Answer every held long poll now (unchanged: 304) and hold no new ones: the server is stopping,
        and a held poll would keep its connection, and so the process, alive for up to its timeout."""
        self.closing = True
        waiting, self._waiters = self._waiters, {}
        for waiters in waiting.values():
            for waiter in waiters:
                self._release(waiter, None)

    def _finish(self, waiter: _Waiter) -> None:
        waiter.done = True
        self.held -= 1
        if waiter.timer is not None:
            waiter.timer.cancel()

    def _release(self, waiter: _Waiter, revision: str | None) -> None:
        if not waiter.done:
            self._finish(waiter)
            waiter.callback(revision)

    def _expire(self, channel: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(channel, [])
        if waiter in waiters:
            waiters.remove(waiter)
        self._release(waiter, None)

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        while True:
            try:
                for channel, revision, problem in await asyncio.to_thread(self.changes):
                    self.moved(channel, revision, problem)
            except (OSError, NautheraError) as error:
                log.warning("cannot read the store: %s", error)
            await asyncio.sleep(self.interval)


def _nothing() -> None:
    """What `hold` returns when it holds nothing."""


async def in_daemon_thread(function: Callable[..., T], *args: Any) -> T:
    """`asyncio.to_thread`, but in a daemon thread: the process does not wait for it to exit. A compile
    or a push in progress at SIGTERM would otherwise hold the stop for as long as it takes (the store is
    crash-safe, so abandoning a publish half-way leaves it consistent)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: Exception | None) -> None:
        if future.done():
            return  # the awaiting task was cancelled
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(T, result))

    def work() -> None:
        try:
            result, error = function(*args), None
        except Exception as raised:  # handed to the awaiting task, which decides
            result, error = None, raised
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=getattr(function, "__name__", "work"), daemon=True).start()
    return await future


def on_loop(loop: asyncio.AbstractEventLoop | None, function: Callable[..., None], *args: Any) -> None:
    """Run `function(*args)` on `loop`: now when called there (or no loop runs yet), else scheduled."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is not None and loop.is_running() and running is not loop:
        loop.call_soon_threadsafe(function, *args)
    else:
        function(*args)


class BundleService:
    """Answers bundle requests for a store's channels (see the module docstring)."""

    def __init__(
        self,
        store: BundleStore,
        token: str | None,
        max_wait: float,
        count: Callable[[str], None],
        count_delta: Callable[[], None],
    ) -> None:
        self.store = store
        self.token = token
        self.max_wait = max_wait
        self.count = count
        self.count_delta = count_delta
        self._snapshots = _Cache(SNAPSHOTS_KEPT)
        self._states = _Cache(STATES_KEPT)
        self._deltas = _Cache(DELTAS_KEPT)
        self._not_modified: OrderedDict[str, Reply] = OrderedDict()

    def offer(self, revision: str, content: bytes, state: BundleState | None = None) -> None:
        """A revision's bundle (verified, or from an in-process compiler with its data tree): nothing to
        read again."""
        self._snapshots.put(revision, content)
        if state is not None:
            self._states.put(revision, state)

    def handle(
        self, watcher: ChannelWatcher, request: BundleRequest, reply: Callable[[Reply], None]
    ) -> Callable[[], None] | None:
        """Answer `request` through `reply` (now or later); a held request returns its drop function."""
        if not bearer_matches(request.authorization, self.token):
            self.count("401")
            reply(
                json_reply(
                    401,
                    {"error": "missing or wrong bearer token"},
                    (b"www-authenticate", b'Bearer realm="nauthera"'),
                )
            )
            return None
        revision = watcher.current(request.channel)
        if revision is None:
            self.count("404")
            shown = request.channel if len(request.channel) <= 64 else request.channel[:64] + "…"
            reply(json_reply(404, {"error": f"channel {shown!r} has no revision"}))
            return None
        if request.etag != revision:
            self._send(request, revision, reply)
            return None
        if request.wait:
            return watcher.hold(
                request.channel, request.wait, lambda moved: self._after_wait(request, moved, reply)
            )
        self._unchanged(revision, reply)
        return None

    def _after_wait(
        self, request: BundleRequest, revision: str | None, reply: Callable[[Reply], None]
    ) -> None:
        if revision is None or revision == request.etag:
            self._unchanged(request.etag or "", reply)
        else:
            self._send(request, revision, reply)

    def _unchanged(self, revision: str, reply: Callable[[Reply], None]) -> None:
        self.count("304")
        answer = self._not_modified.get(revision)
        if answer is None:
            answer = self._not_modified[revision] = Reply(304, ((b"etag", f'"{revision}"'.encode()),))
            while len(self._not_modified) > SNAPSHOTS_KEPT:
                self._not_modified.popitem(last=False)
        reply(answer)

    def _ok(self, revision: str, body: bytes, delta: bool, reply: Callable[[Reply], None]) -> None:
        self.count("200")
        if delta:
            self.count_delta()
        reply(Reply(200, ((b"content-type", BUNDLE_MEDIA_TYPE), (b"etag", f'"{revision}"'.encode())), body))

    def _send(self, request: BundleRequest, revision: str, reply: Callable[[Reply], None]) -> None:
        # A delta only from what could be a stored revision: a made-up ETag costs no read or cache entry.
        since = request.etag if request.delta and request.etag and is_revision_id(request.etag) else None
        if since is not None and (since, revision) in self._deltas:
            body = self._deltas.get((since, revision))
            if body is not None:
                self._ok(revision, body, True, reply)
                return
            since = None
        if since is None and revision in self._snapshots:
            self._ok(revision, self._snapshots.get(revision), False, reply)
            return
        task = asyncio.ensure_future(self._prepare(since, revision))

        def done(finished: asyncio.Future[tuple[bytes, bool]]) -> None:
            if finished.cancelled():
                return
            error = finished.exception()
            if error is None:
                self._ok(revision, *finished.result(), reply)
                return
            log.warning("cannot serve revision %s: %s", revision, error)
            self.count("503")
            reply(json_reply(503, {"error": f"cannot read revision {revision}"}, (b"retry-after", b"5")))

        task.add_done_callback(done)

    async def _prepare(self, since: str | None, revision: str) -> tuple[bytes, bool]:
        """The delta from `since` when there is a useful one, else the snapshot; and which it is."""
        if since is not None:
            body: bytes | None = await self._deltas.compute(
                (since, revision), lambda: self._delta(since, revision)
            )
            if body is not None:
                return body, True
        snapshot: bytes = await self._snapshots.compute(revision, lambda: self._read(revision))
        return snapshot, False

    async def _read(self, revision: str) -> bytes:
        return await asyncio.to_thread(self.store.bundle_bytes, revision)

    async def _state(self, revision: str) -> BundleState | None:
        async def load() -> BundleState | None:
            try:
                content = await self._snapshots.compute(revision, lambda: self._read(revision))
            except (OSError, NautheraError):
                return None
            known = [s.data for s in self._states.values() if s is not None and s.data is not None]
            return await asyncio.to_thread(_parse_state, revision, content, known[-1] if known else None)

        state: BundleState | None = await self._states.compute(revision, load)
        return state

    async def _delta(self, since: str, revision: str) -> bytes | None:
        before, after = await self._state(since), await self._state(revision)
        if before is None or after is None:
            return None
        snapshot = await self._snapshots.compute(revision, lambda: self._read(revision))

        def make() -> bytes | None:
            operations = patch_operations(before, after)
            if operations is None:
                return None
            body = delta_bundle(operations, after)
            return body if len(body) < len(snapshot) else None

        return await asyncio.to_thread(make)


def _parse_state(revision: str, content: bytes, known: DataNode | None) -> BundleState | None:
    """The data tree of a stored bundle; nodes equal to ones of `known` are shared, not duplicated."""
    try:
        files = bundle_entries(content, revision)
        return bundle_state(files, known=nodes_by_digest(known) if known is not None else None)
    except (NautheraError, ValueError, KeyError) as error:
        log.warning("revision %s goes as snapshots only: %s", revision, error)
        return None
