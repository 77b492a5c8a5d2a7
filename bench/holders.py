"""Hold a fleet's bundle requests against one server, as 1,000 OPAs would (run as a child process).

`--mode long-poll`: each connection sends `If-None-Match` + `Prefer: wait=N` and, whenever an answer
comes, asks again at once on the same connection (what OPA does). The first request of each connection
waits a random 1..N seconds instead of N, so the fleet's long-poll timeouts are spread out as in a
fleet that started at different times: about count/N of them expire and are asked again each second,
not all at once. `--mode poll`: each connection makes a conditional GET every U(60, 120) s, the first
after a random 0-120 s (OPA's default periodic polling, for a server without long polling such as
nginx); the connection stays open in between. Every second the counts go to `--status` (JSON).

    python -m bench.holders --port 8282 --path /bundles/stable --etag '"rev"' --count 1000 \
        --mode long-poll --wait 60 --status holders.json --duration 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_HOST = "127.0.0.1"
#: OPA's default periodic polling interval (min_delay_seconds, max_delay_seconds).
POLL_MIN, POLL_MAX = 60.0, 120.0


@dataclass
class Counts:
    connecting: int = 0
    open: int = 0
    requests: int = 0
    responses: int = 0
    status_304: int = 0
    status_other: int = 0
    errors: int = 0
    ready: bool = False


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _hold(args: argparse.Namespace, counts: Counts, stop: asyncio.Event) -> None:
    counts.connecting += 1
    try:
        reader, writer = await asyncio.open_connection(_HOST, args.port)
    except OSError:
        counts.errors += 1
        counts.connecting -= 1
        return
    counts.connecting -= 1
    counts.open += 1
    long_poll = args.mode == "long-poll"
    wait = random.randint(1, args.wait)
    try:
        if not long_poll:
            await _sleep(stop, random.uniform(0, POLL_MAX))
        while not stop.is_set():
            prefer = f"Prefer: modes=snapshot;wait={wait}\r\n" if long_poll else ""
            writer.write(
                f"GET {args.path} HTTP/1.1\r\nHost: {_HOST}:{args.port}\r\nIf-None-Match: {args.etag}\r\n"
                f"{prefer}User-Agent: nauthera-bench-holder\r\n\r\n".encode()
            )
            await writer.drain()
            counts.requests += 1
            status = await _read_response(reader)
            counts.responses += 1
            if status == 304:
                counts.status_304 += 1
            else:
                counts.status_other += 1
            wait = args.wait
            if not long_poll:
                await _sleep(stop, random.uniform(POLL_MIN, POLL_MAX))
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        counts.errors += 1
    finally:
        counts.open -= 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _main(args: argparse.Namespace) -> None:
    counts = Counts()
    stop = asyncio.Event()
    status = Path(args.status)

    def report() -> None:
        staged = status.with_name(status.name + ".tmp")
        staged.write_text(json.dumps({**asdict(counts), "time": time.time()}))
        staged.replace(status)

    tasks: list[asyncio.Task[None]] = []
    for start in range(0, args.count, 100):
        tasks.extend(
            asyncio.create_task(_hold(args, counts, stop)) for _ in range(start, min(start + 100, args.count))
        )
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline:
        expected = counts.open == args.count
        # Long polls are held once asked; polling connections are held once open.
        counts.ready = expected and (args.mode == "poll" or counts.requests >= args.count)
        report()
        await asyncio.sleep(1)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--etag", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--mode", choices=("long-poll", "poll"), default="long-poll")
    parser.add_argument("--wait", type=int, default=60)
    parser.add_argument("--status", required=True)
    parser.add_argument("--duration", type=float, default=300, help="seconds until the holder exits")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.count + 256)), hard))
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
