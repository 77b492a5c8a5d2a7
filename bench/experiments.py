"""Experiments behind the findings in bench/README.md (not run by `make bench`; compiler/ is untouched).

    python -m bench.experiments compile-profile [--policies 10000]   # where compile time goes
    python -m bench.experiments decision-index                       # the decision Rego with the index fix
    python -m bench.experiments server-runtime                       # nauthera serve on uvloop / GC tuned

`compile-profile` prints a cProfile of one in-process compile of generated policies. `decision-index` rewrites
`nauthera/authclient/decision.rego` inside compiled bundles so that the index is read through ground
paths (no whole bucket bound to a variable), checks that every decision stays the same, and compares
`opa bench` before and after at 10 and 10,000 policies. `server-runtime` holds 1,000 long polls against
`nauthera serve` started as is, on uvloop, with larger GC thresholds, and both, and measures 304s and
200s with wrk, to show where the bundle server's tail latency comes from.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import functools
import io
import json
import pstats
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from bench.common import nauthera_command, run_wait4, summary, tool
from bench.generate import client, generate

# --- compile profile -------------------------------------------------------------------------------


def compile_profile(policies: int, top: int) -> None:
    """cProfile of one in-process compile; the functions with the most own time first."""
    from nauthera.targets.base import CompileOptions  # noqa: PLC0415
    from nauthera.targets.outputs import compile_policies  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="nauthera-exp-") as scratch:
        repo = generate(Path(scratch) / "policies", policies)
        profiler = cProfile.Profile()
        profiler.enable()
        result = compile_policies(CompileOptions(paths=[repo], out=Path(scratch) / "out"))
        profiler.disable()
        if not result.ok:
            raise SystemExit("the generated policies did not compile")
        output = io.StringIO()
        pstats.Stats(profiler, stream=output).sort_stats("tottime").print_stats(top)
        print(output.getvalue())


# --- decision index fix ----------------------------------------------------------------------------

_OLD_START = "type_buckets contains bucket if {"
_OLD_END = "governing contains id if {"
_NEW = """app_types := [client.type, "*"]

# Each lookup is a ground path into data, so OPA reads only that entry and never converts a whole
# bucket (10,000 namespace prefixes) into a Rego value.
candidates contains id if {
\tsome app_type in app_types
\tsome length in numbers.range(0, count(client.namespace))
\tsome id in data.nauthera.index[app_type].namespace_prefix[substring(client.namespace, 0, length)]
}

candidates contains id if {
\tsome app_type in app_types
\tsome key, value in client.labels
\tsome id in data.nauthera.index[app_type].label[key][value]
}

candidates contains id if {
\tsome app_type in app_types
\tsome id in data.nauthera.index[app_type].unindexed
}

"""


def rewrite_bundle(source: Path, target: Path) -> None:
    with tarfile.open(source, "r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    name = next(n for n in files if n.lstrip("/") == "nauthera/authclient/decision.rego")
    text = files[name].decode()
    if _OLD_START not in text:
        raise SystemExit(f"{source}: the decision already reads the index by full paths; nothing to rewrite")
    start, end = text.index(_OLD_START), text.index(_OLD_END)
    files[name] = (text[:start] + _NEW + text[end:]).encode()
    with tarfile.open(target, "w:gz") as tar:
        for entry, content in sorted(files.items()):
            info = tarfile.TarInfo(entry)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def _decide(bundle: Path, document: dict[str, Any]) -> Any:
    completed = subprocess.run(
        [
            str(tool("opa")),
            "eval",
            "--format",
            "json",
            "-b",
            str(bundle),
            "-I",
            "data.nauthera.authclient.decision",
        ],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout)["result"][0]["expressions"][0]["value"]


def _bench(bundle: Path, input_file: Path) -> dict[str, float]:
    completed = subprocess.run(
        [
            str(tool("opa")),
            "bench",
            "--format",
            "json",
            "--count",
            "3",
            "-b",
            str(bundle),
            "-i",
            str(input_file),
            "data.nauthera.authclient.decision",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    decoder, text, index, runs = json.JSONDecoder(), completed.stdout.strip(), 0, []
    while index < len(text):
        doc, index = decoder.raw_decode(text, index)
        runs.append(doc)
        while index < len(text) and text[index].isspace():
            index += 1
    return {
        "ms_per_op": summary([r["T"] / r["N"] / 1e6 for r in runs])["median"],
        "allocs_per_op": summary([r["MemAllocs"] / r["N"] for r in runs])["median"],
    }


def decision_index() -> None:
    with tempfile.TemporaryDirectory(prefix="nauthera-exp-") as scratch:
        root = Path(scratch)
        input_file = root / "input.json"
        input_file.write_text(json.dumps(client()))
        probes = [client(), client(["client_credentials"])]
        other = copy.deepcopy(client())
        other["metadata"]["namespace"] = "platform-0017-api"
        probes.append(other)
        for count in (10, 10_000):
            repo = generate(root / f"policies-{count}", count)
            out = root / f"out-{count}"
            run_wait4(nauthera_command("compile", repo, "--out", out), timeout=900)
            original, fixed = out / "bundle.tar.gz", root / f"fixed-{count}.tar.gz"
            rewrite_bundle(original, fixed)
            for probe in probes:
                if _decide(original, probe) != _decide(fixed, probe):
                    raise SystemExit(f"the rewrite changes a decision at {count} policies: {probe}")
            before, after = _bench(original, input_file), _bench(fixed, input_file)
            print(
                f"{count:>6,} policies: as compiled {before['ms_per_op']:.3f} ms/op "
                f"({before['allocs_per_op']:,.0f} allocs); with the index fix {after['ms_per_op']:.3f} ms/op "
                f"({after['allocs_per_op']:,.0f} allocs); decisions identical"
            )


# --- bundle server runtime -------------------------------------------------------------------------

_SERVE_VARIANT = """
import gc, sys
variant = sys.argv[1]
if "gc-threshold" in variant:
    gc.set_threshold(50_000, 20, 100)
if "uvloop" in variant:
    import uvloop
    uvloop.install()
from nauthera.cli import main
sys.argv = ["nauthera", *sys.argv[2:]]
main()
"""
SERVER_VARIANTS = ("as is", "uvloop", "gc-threshold", "uvloop+gc-threshold")


def server_runtime(policies: int) -> None:
    """`nauthera serve` with 1,000 held long polls, as is and with runtime variants (wrk, 2 x 4 s each)."""
    from nauthera.store.folder import FolderStore  # noqa: PLC0415

    from bench.common import LOOPBACK  # noqa: PLC0415
    from bench.server_bench import check_response, holders, holding, serves, wrk  # noqa: PLC0415
    from tests.harness.processes import Process, free_port, wait_until  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="nauthera-exp-") as scratch:
        root = Path(scratch)
        run_wait4(
            nauthera_command("compile", generate(root / "policies", policies), "--out", root / "out"), 900
        )
        FolderStore(root / "store").publish(root / "out" / "bundle.tar.gz", "stable")
        (root / "serve_variant.py").write_text(_SERVE_VARIANT)
        for variant in SERVER_VARIANTS:
            port = free_port()
            url = f"http://{LOOPBACK}:{port}"
            args: list[str | Path] = [sys.executable, root / "serve_variant.py", variant, "serve"]
            args += ["--store", root / "store"]
            server = Process([*args, "--listen", f"{LOOPBACK}:{port}"], root / f"serve-{port}.log").start()
            try:
                wait_until(functools.partial(serves, url), 30, "serve")
                etag = check_response(url, None, 200)
                fleet = holders(root, f"fleet-{port}", url, etag, 1000, "long-poll", 90)
                wait_until(functools.partial(holding, root, f"fleet-{port}"), 60, "the fleet")
                wrk(url, etag, 1)
                cases = {
                    "304": [wrk(url, etag, 4) for _ in range(2)],
                    "200": [wrk(url, None, 4) for _ in range(2)],
                }
                fleet.stop()
            finally:
                server.stop()
            print(
                f"{variant:22} "
                + "  ".join(
                    f"{case}: {summary([r['throughput_rps'] for r in runs])['median']:7,.0f} req/s "
                    f"p99 {summary([r['p99_ms'] for r in runs])['median']:6.1f} ms"
                    for case, runs in cases.items()
                ),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    profile = commands.add_parser("compile-profile")
    profile.add_argument("--policies", type=int, default=10_000)
    profile.add_argument("--top", type=int, default=25)
    commands.add_parser("decision-index")
    server = commands.add_parser("server-runtime")
    server.add_argument("--policies", type=int, default=10_000)
    args = parser.parse_args()
    if args.command == "compile-profile":
        compile_profile(args.policies, args.top)
    elif args.command == "server-runtime":
        server_runtime(args.policies)
    else:
        decision_index()


if __name__ == "__main__":
    main()
