"""What a fleet sends besides its long polls, at fixed rates (run as a child process of fleet_bench).

Status reports (OPA's status API, one realistic ~1.5 KB body per agent, agents taking turns),
decision-log uploads (gzip'd arrays of denied decisions, as OPA batches them) and conditional GETs
without a wait (a 304 each, whose latency is the figure) go out on keep-alive connections, each kind
on its own schedule: request n of a kind is due at n / rate seconds and its latency is measured from
when it is sent. At the end the counts and latencies go to `--out` (JSON).

    python -m bench.fleet_load --port 8282 --etag '"rev"' --status-rate 200 --events-rate 1000 \
        --probe-rate 50 --duration 60 --out load.json
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_HOST = "127.0.0.1"
#: Events per decision-log upload (OPA sends what accumulated since its last upload).
EVENTS_PER_UPLOAD = 50
#: Connections per kind: enough that one slow answer does not hold the schedule back.
CONNECTIONS = 8
#: Seconds after the schedule ends for the queued requests to be answered.
DRAIN_SECONDS = 5


@dataclass
class Kind:
    #: Requests still queued (not sent) when the run ended: the server fell behind the schedule.
    unsent: int = 0
    sent: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    #: Seconds since the start and milliseconds each answer took.
    latencies: list[tuple[float, float]] = field(default_factory=list)


def status_body(agent: int, revision: str) -> bytes:
    """An OPA status report as OPA 1.x sends it (bundle, plugins and metrics sections)."""
    now = "2026-11-30T12:00:00.000000000Z"
    return json.dumps(
        {
            "labels": {"id": str(uuid.UUID(int=agent)), "version": "1.10.0", "name": f"opa-{agent:04d}"},
            "bundles": {
                "stable": {
                    "name": "stable",
                    "active_revision": revision,
                    "last_successful_activation": now,
                    "last_successful_download": now,
                    "last_successful_request": now,
                    "last_request": now,
                    "type": "snapshot",
                    "metrics": {"timer_rego_data_parse_ns": 1_202_000, "timer_bundle_request_ns": 3_400_000},
                }
            },
            "plugins": {name: {"state": "OK"} for name in ("bundle", "decision_logs", "discovery", "status")},
            "metrics": {
                "prometheus": {
                    "http_request_duration_seconds": {
                        "name": "http_request_duration_seconds",
                        "help": "A histogram of duration for requests.",
                        "type": 4,
                        "metric": [
                            {"label": [{"name": "code", "value": "200"}], "histogram": {"sample_count": 9}}
                        ],
                    }
                }
            },
        }
    ).encode()


def log_body(upload: int) -> bytes:
    """A gzip'd decision-log upload of denied AuthClient decisions."""
    events = []
    for number in range(EVENTS_PER_UPLOAD):
        client = {
            "apiVersion": "auth.nauthera.io/v1alpha1",
            "kind": "AuthClient",
            "metadata": {"name": f"app-{(upload * EVENTS_PER_UPLOAD + number) % 997}", "namespace": "team-a"},
            "spec": {
                "applicationType": "web",
                "grantTypes": ["implicit"],
                "redirectUris": ["https://a.example/cb"],
            },
        }
        violation = {
            "policy": "security/web-apps-policy",
            "field": "allowedGrantTypes",
            "message": 'grant type "implicit" is not allowed by security/web-apps-policy',
        }
        events.append(
            {
                "decision_id": str(uuid.UUID(int=upload * EVENTS_PER_UPLOAD + number)),
                "path": "nauthera/authclient/decision",
                "input": client,
                "result": {"allowed": False, "violations": [violation], "warnings": [], "dryrun": []},
                "timestamp": "2026-11-30T12:00:00Z",
                "labels": {"id": str(uuid.UUID(int=number)), "version": "1.10.0"},
            }
        )
    return gzip.compress(json.dumps(events).encode())


async def _read_status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), 0
    )
    if length:
        await reader.readexactly(length)
    return int(lines[0].split()[1])


async def _connection(
    port: int,
    requests: asyncio.Queue[bytes],
    kind: Kind,
    started: float,
    expected: int,
) -> None:
    reader, writer = await asyncio.open_connection(_HOST, port)
    try:
        while True:
            request = await requests.get()
            sent = time.monotonic()
            kind.sent += 1
            try:
                writer.write(request)
                await writer.drain()
                status = await _read_status(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                kind.errors += 1
                kind.statuses[type(error).__name__] = kind.statuses.get(type(error).__name__, 0) + 1
                writer.close()
                reader, writer = await asyncio.open_connection(_HOST, port)
                continue
            kind.latencies.append((sent - started, (time.monotonic() - sent) * 1000))
            kind.statuses[str(status)] = kind.statuses.get(str(status), 0) + 1
            kind.ok += status == expected
    finally:
        writer.close()


async def _schedule(
    rate: float, duration: float, started: float, make: Any, requests: asyncio.Queue[bytes]
) -> None:
    """Put request n on the queue at started + n / rate (open loop: a slow server does not slow it)."""
    number = 0
    while (due := number / rate) < duration:
        delay = started + due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        requests.put_nowait(make(number))
        number += 1


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    host = f"Host: {_HOST}:{args.port}\r\n"
    statuses = {agent: status_body(agent, args.etag.strip('"')) for agent in range(args.agents)}
    uploads = [log_body(upload) for upload in range(64)]

    def status(number: int) -> bytes:
        body = statuses[number % args.agents]
        return (
            f"POST /status HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def logs(number: int) -> bytes:
        body = uploads[number % len(uploads)]
        return (
            f"POST /logs HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def probe(number: int) -> bytes:
        del number
        return f"GET /bundles/stable HTTP/1.1\r\n{host}If-None-Match: {args.etag}\r\n\r\n".encode()

    kinds = {"status": Kind(), "logs": Kind(), "probe": Kind()}
    plan = {
        "status": (args.status_rate, status, 204),
        "logs": (args.events_rate / EVENTS_PER_UPLOAD, logs, 204),
        "probe": (args.probe_rate, probe, 304),
    }
    started = time.monotonic()
    workers, schedules = [], []
    queues: list[asyncio.Queue[bytes]] = []
    kinds_run: list[str] = []
    for name, (rate, make, expected) in plan.items():
        if rate <= 0:
            continue
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.append(queue)
        kinds_run.append(name)
        workers += [
            asyncio.create_task(_connection(args.port, queue, kinds[name], started, expected))
            for _ in range(CONNECTIONS)
        ]
        schedules.append(asyncio.create_task(_schedule(rate, args.duration, started, make, queue)))
    await asyncio.gather(*schedules)
    drain = time.monotonic() + DRAIN_SECONDS  # the last answers; what is still queued then was too late
    while any(not queue.empty() for queue in queues) and time.monotonic() < drain:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    for name, queue in zip(kinds_run, queues, strict=True):
        kinds[name].unsent = queue.qsize()
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return {
        "duration": args.duration,
        "rates": {name: rate for name, (rate, _, _) in plan.items()},
        "events_per_upload": EVENTS_PER_UPLOAD,
        "kinds": {name: asdict(kind) for name, kind in kinds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--etag", required=True)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--status-rate", type=float, default=200)
    parser.add_argument("--events-rate", type=float, default=1000)
    parser.add_argument("--probe-rate", type=float, default=50)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    Path(args.out).write_text(json.dumps(asyncio.run(_main(args))))


if __name__ == "__main__":
    main()
