"""`compile`, `check` and `test`: policies to artifacts, clients against a bundle, generated tests."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nauthera.cli.common import EXIT_FINDINGS, EXIT_OK, errors_exit_2, format_option
from nauthera.cli.reporting import (
    CHECK_FORMATS,
    DIAGNOSTIC_FORMATS,
    check_json,
    check_text,
    count_line,
    render_diagnostics,
)
from nauthera.compile.analysis import count_files
from nauthera.compile.diagnostics import Diagnostic, Level
from nauthera.engines.check import check_clients
from nauthera.engines.testing import has_gatekeeper_suites, run_gator_verify, run_opa_tests
from nauthera.targets.base import CompileOptions
from nauthera.targets.opa.bundle import RevisionError, check_revision_id
from nauthera.targets.opa.signing import ALGORITHMS, read_key
from nauthera.targets.outputs import TARGETS, CompileResult, compile_policies

#: Below this many files a progress bar would only flicker.
_PROGRESS_THRESHOLD = 50
_stderr = Console(stderr=True)


@contextmanager
def _file_progress(paths: list[Path], label: str) -> Iterator[Callable[[Path], None] | None]:
    """A progress bar on stderr for compiles of many files; nothing for small ones or pipes."""
    total = count_files(paths)
    if total < _PROGRESS_THRESHOLD or not _stderr.is_terminal:
        yield None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_stderr, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda _path: progress.advance(task)


def _compile(paths: list[Path], out: Path, **options: Any) -> CompileResult:
    with _file_progress(paths, "compiling") as on_file:
        return compile_policies(CompileOptions(paths=paths, out=out, **options), on_file)


def _valid_revision(_ctx: click.Context, _param: click.Parameter, revision: str | None) -> str | None:
    """The store's rule, before any work: a revision `bundle publish` would refuse is a usage error."""
    try:
        return None if revision is None else check_revision_id(revision)
    except RevisionError as error:
        raise click.BadParameter(str(error)) from error


def _summary(result: CompileResult, diagnostics: list[Diagnostic]) -> tuple[dict[str, Any], str]:
    summary = {
        "ok": result.ok,
        "bundle": str(result.bundle) if result.bundle else None,
        "gatekeeper": str(result.gatekeeper) if result.gatekeeper else None,
        "revision": result.revision,
        "policies": len(result.policies),
    }
    if result.ok:
        written = []
        if result.bundle:
            written.append(f"{result.bundle} (revision {result.revision})")
        if result.gatekeeper:
            written.append(f"{result.gatekeeper}/")
        line = (
            f"compiled {len(result.policies)} polic{'y' if len(result.policies) == 1 else 'ies'} into "
            f"{' and '.join(written)}; {count_line(diagnostics)}"
        )
    else:
        line = f"compilation failed: {count_line(diagnostics)}; nothing was written"
    return summary, line


@click.command("compile")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help=(
        "Output folder: bundle.tar.gz, gatekeeper/, tests/opa/ and tests/gatekeeper/ are replaced there "
        "(outputs of the target not compiled are removed), nothing else."
    ),
)
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="opa",
    show_default=True,
    help="opa: bundle.tar.gz; gatekeeper: ConstraintTemplates and Constraints in gatekeeper/; all: both.",
)
@format_option(
    DIAGNOSTIC_FORMATS, "Diagnostics as text, json, sarif (SARIF 2.1.0 for code scanning) or github."
)
@click.option(
    "--revision",
    callback=_valid_revision,
    help="Bundle revision (letters, digits, '.', '_', '+', '-'); default: derived from the content.",
)
@click.option(
    "--signing-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Sign the bundle: PEM private key (RS/PS/ES) or a file holding the HMAC secret (HS).",
)
@click.option(
    "--signing-alg",
    type=click.Choice(ALGORITHMS),
    default="RS256",
    show_default=True,
    help="JWT algorithm of the signature (HS256 takes a shared secret).",
)
@click.option("--signing-key-id", help="Key id in the signature (default: `default`, as opa build).")
@click.option("--default-allow", is_flag=True, help="Allow clients that no policy governs (default: deny).")
@click.option("--fail-on-warn", is_flag=True, help="Treat warnings as errors (exit 1, nothing written).")
@errors_exit_2
def compile_command(
    paths: tuple[Path, ...],
    out: Path,
    target: str,
    output_format: str,
    revision: str | None,
    signing_key: Path | None,
    signing_alg: str,
    signing_key_id: str | None,
    default_allow: bool,
    fail_on_warn: bool,
) -> None:
    """Compile AuthPolicy files under PATHS into an OPA bundle and/or Gatekeeper objects in --out."""
    result = _compile(
        list(paths),
        out,
        revision=revision,
        fail_closed=not default_allow,
        fail_on_warn=fail_on_warn,
        target=target,
        signing_key=read_key(signing_key) if signing_key else None,
        signing_alg=signing_alg,
        signing_key_id=signing_key_id,
    )
    summary, line = _summary(result, result.diagnostics)
    click.echo(render_diagnostics(output_format, result.diagnostics, summary, line), nl=False)
    sys.exit(EXIT_OK if result.ok else EXIT_FINDINGS)


@click.command("check")
@click.option(
    "--bundle",
    "bundle",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The bundle.tar.gz that `nauthera compile` wrote.",
)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option(CHECK_FORMATS, "text for people, json for scripts (SPEC decision documents).")
@errors_exit_2
def check_command(bundle: Path, paths: tuple[Path, ...], output_format: str) -> None:
    """Evaluate the AuthClients under PATHS against --bundle with the real OPA engine."""
    results, notes = check_clients(bundle, list(paths))
    for note in notes:
        click.echo(f"{note.position}: {note.level}: {note.message} [{note.code}]", err=True)
    click.echo(check_json(results) if output_format == "json" else check_text(results), nl=False)
    failed = any(not r.allowed for r in results) or any(n.level is Level.ERROR for n in notes)
    sys.exit(EXIT_FINDINGS if failed else EXIT_OK)


@click.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the compiled bundle and generated tests here (default: a temporary folder).",
)
@click.option("--default-allow", is_flag=True, help="Compile as `compile --default-allow` would.")
@click.option(
    "--coverage-threshold",
    type=click.FloatRange(0, 100),
    default=0.0,
    show_default=True,
    help="Fail when coverage of the generated Rego is below this percentage.",
)
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="all",
    show_default=True,
    help="What to compile and test: opa (opa test), gatekeeper (gator verify), or all.",
)
@click.option("-v", "--verbose", is_flag=True, help="List every test.")
@errors_exit_2
def test_command(
    paths: tuple[Path, ...],
    out: Path | None,
    default_allow: bool,
    coverage_threshold: float,
    target: str,
    verbose: bool,
) -> None:
    """Compile PATHS, then run the Rego tests (`opa test`) and the Gatekeeper suites (`gator verify`)."""
    with tempfile.TemporaryDirectory(prefix="nauthera-test-") as scratch:
        folder = out or Path(scratch) / "build"
        result = _compile(list(paths), folder, fail_closed=not default_allow, target=target)
        if not result.ok:
            summary, line = _summary(result, result.diagnostics)
            click.echo(render_diagnostics("text", result.diagnostics, summary, line), nl=False)
            sys.exit(EXIT_FINDINGS)
        run = run_opa_tests(folder, list(paths), verbose) if result.bundle else None
        suites = run_gator_verify(folder, verbose) if has_gatekeeper_suites(folder) else None
    passed = True
    if run is not None:
        click.echo(run.output)
        click.echo(f"coverage of generated Rego: {run.coverage:.1f}%")
        below = run.coverage < coverage_threshold
        if below:
            click.echo(
                f"coverage {run.coverage:.1f}% is below the threshold {coverage_threshold:.1f}%", err=True
            )
        passed = run.passed and not below
    if suites is not None:
        click.echo(suites.output)
        passed = passed and suites.passed
    sys.exit(EXIT_OK if passed else EXIT_FINDINGS)
