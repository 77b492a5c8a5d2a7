"""`serve`, `sidecar`, `agents` and `decisions`: the fleet-facing commands (exit codes as in cli.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nauthera.cli.common import errors_exit_2, format_option, store_option
from nauthera.compile.durations import DurationError, parse_duration_ns
from nauthera.errors import NautheraError
from nauthera.serve.server import ServerConfig, ServerState, create_app, parse_listen, read_token, run, serve
from nauthera.serve.sidecar import Sidecar
from nauthera.store.base import BundleStore

if TYPE_CHECKING:
    from nauthera.serve.push import OpaPusher

DEFAULT_LISTEN = "127.0.0.1:8282"
DEFAULT_SERVER = f"http://{DEFAULT_LISTEN}"


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _seconds(text: str, option: str) -> float:
    try:
        return parse_duration_ns(text) / 1e9
    except DurationError as error:
        raise click.BadParameter(f"{text!r} {error}", param_hint=option) from error


_SIZE = re.compile(r"(\d+)\s*(|B|KiB|MiB|GiB)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def _bytes(text: str, option: str) -> int:
    """A size like 1048576, 512KiB or 64MiB."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter(f"{text!r}: expected a size like 512KiB or 64MiB", param_hint=option)
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


#: The limits a user may tune (README "Limits"): option, ServerConfig field, default, and the parser.
_LIMIT_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--max-body", "max_upload_bytes", "64MiB", "Largest request body and decompressed decision-log upload."),
    ("--max-status", "max_status_bytes", "1MiB", "Largest status report (compressed or not)."),
    ("--max-json-depth", "max_json_depth", "64", "Deepest nesting of arrays and objects in a JSON body."),
    ("--max-agents", "max_agents", "100000", "Agents kept in the fleet view (least recently seen go first)."),
    ("--max-agent-memory", "max_agent_bytes", "128MiB", "Memory the fleet view may take, roughly."),
    ("--max-decisions", "max_decision_events", "100000", "Denied decisions kept for `decisions` (newest)."),
    ("--head-timeout", "head_timeout", "10s", "Time a client has to send a request's head (408 after)."),
    ("--body-timeout", "body_timeout", "60s", "Time a client has to send a request's body (408 after)."),
    ("--idle-timeout", "idle_timeout", "75s", "Idle keep-alive connections are closed after this."),
    (
        "--send-timeout",
        "send_timeout",
        "30s",
        "A client that reads none of its answers this long is dropped.",
    ),
)


#: Upper bounds of the limits (beyond them a value means nothing but an overflow somewhere).
_MAX_COUNT, _MAX_BYTES, _MAX_SECONDS = 10**9, 2**40, 7 * 24 * 3600


def _limits(options: dict[str, str]) -> dict[str, Any]:
    """ServerConfig fields from the limit options' values."""
    fields: dict[str, Any] = {}
    for option, name, _, _ in _LIMIT_OPTIONS:
        text = options[option.removeprefix("--").replace("-", "_")]
        if name.endswith("_bytes"):
            value: float = _bytes(text, option)
            ceiling, what = _MAX_BYTES, "1TiB"
        elif name.endswith("_timeout"):
            value, ceiling, what = _seconds(text, option), _MAX_SECONDS, "168h"
        elif text.isdigit():
            value, ceiling, what = int(text), _MAX_COUNT, f"{_MAX_COUNT:,}"
        else:
            raise click.BadParameter(f"{text!r}: expected a positive whole number", param_hint=option)
        if not 0 < value <= ceiling:
            raise click.BadParameter(f"{text!r}: expected more than 0 and at most {what}", param_hint=option)
        fields[name] = value
    return fields


def exit_on_stop_signals() -> None:
    """Until a server takes SIGTERM/SIGINT over (its graceful stop), either ends the start-up at once
    with exit 0: Kubernetes stops a pod with SIGTERM, and a first compile may be under way (the store is
    crash-safe, so a publish cut short leaves it consistent)."""

    def stop(signum: int, frame: Any) -> None:
        del signum, frame
        raise SystemExit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def server_options(channel_help: str) -> Callable[[Any], Any]:
    """Options shared by `serve` and `sidecar`; `--channel` means a little more for the sidecar."""
    options: list[Callable[[Any], Any]] = [
        store_option,
        click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT to bind."),
        click.option(
            "--token-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Require `Authorization: Bearer <token>` with the token in this file.",
        ),
        click.option(
            "--tls-cert",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.",
        ),
        click.option(
            "--tls-key",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="PEM private key of --tls-cert.",
        ),
        click.option("--channel", default="stable", show_default=True, help=channel_help),
        click.option(
            "--stale-after",
            default="30s",
            show_default=True,
            help="An agent not on its channel's revision this long after a publish is stale.",
        ),
        *(
            click.option(option, default=default, show_default=True, help=text)
            for option, _, default, text in _LIMIT_OPTIONS
        ),
    ]

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _tls_pair(tls_cert: Path | None, tls_key: Path | None) -> None:
    """Load the pair once before serving, so a wrong file is a clear error rather than a failed start."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_cert is not None and tls_key is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls_cert, tls_key)
        except (ssl.SSLError, ValueError) as error:
            raise NautheraError(
                f"{tls_cert}, {tls_key}: not a PEM certificate and matching private key ({error})"
            ) from error


def _state(
    store: BundleStore,
    token_file: Path | None,
    channel: str,
    stale_after: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    limits: dict[str, str],
) -> ServerState:
    _tls_pair(tls_cert, tls_key)
    config = ServerConfig(
        default_channel=channel,
        token=read_token(token_file),
        stale_after=_seconds(stale_after, "--stale-after"),
        **_limits(limits),
    )
    store.channel_names()  # a store that cannot be read is an error now, not in the server's start-up
    return ServerState(store, config)


@click.command("serve")
@server_options("Channel of agents whose bundle name is not a channel (nor labelled nauthera.io/channel).")
@errors_exit_2
def serve_command(
    store: BundleStore,
    listen: str,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    channel: str,
    stale_after: str,
    **limits: str,
) -> None:
    """Serve the store's channels to OPA (bundle API with long polling), take status and decision logs."""
    exit_on_stop_signals()
    _logging()
    state = _state(store, token_file, channel, stale_after, tls_cert, tls_key, limits)
    host, port = parse_listen(listen)
    run(serve(create_app(state), host, port, tls_cert, tls_key))


@click.command("sidecar")
@click.option(
    "--source",
    "sources",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="Policy folder or Git checkout to compile and watch (repeatable).",
)
@server_options(
    "Channel each good compile is published to and served on; also the channel of agents whose bundle "
    "name is not a channel."
)
@click.option(
    "--push-to", help="Also load policy and data into this OPA's REST API (e.g. http://127.0.0.1:8181)."
)
@click.option(
    "--push-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Bearer token for --push-to, read from this file.",
)
@click.option("--debounce", default="200ms", show_default=True, help="Quiet time before recompiling.")
@errors_exit_2
def sidecar_command(
    sources: tuple[Path, ...],
    store: BundleStore,
    listen: str,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    channel: str,
    stale_after: str,
    push_to: str | None,
    push_token_file: Path | None,
    debounce: str,
    **limits: str,
) -> None:
    """Compile SOURCE at start and on every change, publish good compiles to --channel, serve them."""
    exit_on_stop_signals()
    _logging()
    state = _state(store, token_file, channel, stale_after, tls_cert, tls_key, limits)
    pusher = _pusher(push_to, read_token(push_token_file)) if push_to else None
    sidecar = Sidecar(list(sources), state, channel, _seconds(debounce, "--debounce"))
    state.readiness = sidecar.readiness
    if pusher is not None:
        sidecar.push_status = pusher.status
    host, port = parse_listen(listen)
    sidecar.compile_and_publish()
    run(_run_sidecar(sidecar, pusher, state, host, port, tls_cert, tls_key))


def _pusher(url: str, token: str | None) -> OpaPusher:
    # Imported here: its OPA client libraries cost the sidecar 15 MB, and only push mode needs them.
    from nauthera.serve.push import OpaPusher  # noqa: PLC0415

    return OpaPusher(url, token)


async def _run_sidecar(
    sidecar: Sidecar,
    pusher: OpaPusher | None,
    state: ServerState,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    tasks = [asyncio.create_task(sidecar.watch())]
    if pusher is not None:
        failed = state.metrics.push_failures.inc
        tasks.append(asyncio.create_task(pusher.keep_loaded(state.store, sidecar.channel, on_failure=failed)))
    try:
        await serve(create_app(state), host, port, tls_cert, tls_key)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _get(
    server: str, path: str, token_file: Path | None, key: str, params: dict[str, str] | None = None
) -> Any:
    """`key` of the JSON a Nauthera server answers on `path`; anything else is an error naming the URL."""
    # Imported here: only these client commands use it, and the servers stay 8 MB lighter.
    import requests  # noqa: PLC0415

    token = read_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{server.rstrip('/')}{path}"
    try:
        response = requests.get(url, headers=headers, params=params, timeout=10)
    except (requests.RequestException, ValueError) as error:
        raise NautheraError(f"cannot reach {server}: {error}") from error
    if response.status_code != 200:
        raise NautheraError(f"{url} answered {response.status_code}: {response.text.strip()[:500]}")
    try:
        return response.json()[key]
    except (ValueError, KeyError, TypeError) as error:
        raise NautheraError(f"{url} is not a Nauthera server: its answer has no {key!r}") from error


def client_options(command: Any) -> Any:
    command = format_option(("text", "json"))(command)
    command = click.option(
        "--token-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Send `Authorization: Bearer <token>` with the token in this file (the server's --token-file).",
    )(command)
    return click.option(
        "--server", default=DEFAULT_SERVER, show_default=True, help="URL of `nauthera serve` or `sidecar`."
    )(command)


@click.command("agents")
@client_options
@errors_exit_2
def agents_command(server: str, token_file: Path | None, output_format: str) -> None:
    """List the OPA agents that report to a Nauthera server, with their revisions. Exit 1 if any is stale."""
    agents = _get(server, "/v1/agents", token_file, "agents")
    if output_format == "json":
        click.echo(json.dumps({"agents": agents}, indent=2))
    else:
        for agent in agents:
            marker = "STALE" if agent["stale"] else "ok"
            bundles = ", ".join(
                f"{name}={b['active_revision']} (channel {b['channel']}: {b['channel_revision']})"
                for name, b in agent["bundles"].items()
            )
            name = agent["labels"].get("name") or agent["id"]
            click.echo(f"{name}: {marker}: {bundles or 'no bundles'}")
            for problem in agent["errors"]:
                click.echo(f"    error: {problem}")
        click.echo(f"{len(agents)} agents, {sum(a['stale'] for a in agents)} stale")
    sys.exit(1 if any(a["stale"] for a in agents) else 0)


@click.command("decisions")
@client_options
@click.option("--since", help="Only decisions this recent (a Go duration, e.g. 15m or 24h).")
@errors_exit_2
def decisions_command(server: str, token_file: Path | None, output_format: str, since: str | None) -> None:
    """Summarise denied decisions from OPA decision logs by policy, field and client."""
    params = {"since": str(_seconds(since, "--since"))} if since else None
    denied = _get(server, "/v1/decisions", token_file, "denied", params)
    if output_format == "json":
        click.echo(json.dumps({"denied": denied}, indent=2))
        return
    for row in denied:
        click.echo(f"{row['count']:>6}  {row['policy'] or '-'}  {row['field']}  {row['client']}")
    click.echo(f"{sum(r['count'] for r in denied)} denials")
