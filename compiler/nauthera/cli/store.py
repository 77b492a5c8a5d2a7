"""Commands of the bundle store: `nauthera bundle ...` and `nauthera impact`.

Formatting and exit codes live here (0 ok, 1 findings, 2 usage or I/O errors); the work is done by
`store`, `signing`, `diff` and `impact`. `cli.py` registers `bundle` and `impact` on the main group.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import click

from nauthera.cli.common import EXIT_FINDINGS, EXIT_OK, errors_exit_2, format_option, store_option
from nauthera.store.base import BundleStore, RevisionInfo
from nauthera.store.diff import diff_bundles, diff_text
from nauthera.store.impact import NEWLY_DENIED, impact, impact_text
from nauthera.targets.opa.signing import ALGORITHMS, read_key, verify_bundle

FORMATS = ("text", "json")
_format_option = format_option(FORMATS)


def _emit(output_format: str, document: Any, text: str) -> None:
    click.echo(json.dumps(document, indent=2) + "\n" if output_format == "json" else text, nl=False)


def _resolve(store: BundleStore, ref: str) -> tuple[Path, str]:
    """A bundle file and its label from a path to a .tar.gz, a revision (or prefix), or a channel name."""
    path = Path(ref)
    if path.is_file():
        return path, ref
    revision = store.resolve(ref)
    return store.bundle_path(revision), ref


def _channels_by_revision(store: BundleStore) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for channel, revision in store.channels().items():
        result.setdefault(revision, []).append(channel)
    return result


def _info_json(info: RevisionInfo, channels: list[str]) -> dict[str, Any]:
    return {**info.as_json(), "channels": channels}


def _info_text(info: RevisionInfo, channels: list[str], *, policies: bool) -> str:
    rows = [
        ("revision", info.revision),
        ("channels", ", ".join(channels) or "-"),
        ("parent", info.parent or "-"),
        ("created", info.created),
        ("sha256", info.digest),
        ("size", f"{info.size} bytes"),
        (
            "git commit",
            f"{info.git_commit}{' (dirty)' if info.git_dirty else ''}" if info.git_commit else "-",
        ),
        ("author", info.author or "-"),
        ("message", info.message or "-"),
        ("signed by", info.signer_key_id or "- (unsigned)"),
        ("compiler", info.compiler or "-"),
        ("policies", str(len(info.policies))),
    ]
    lines = [f"{key + ':':<12} {value}" for key, value in rows]
    if policies:
        width = max((len(pid) for pid in info.policies), default=0)
        lines.extend(
            f"  {pid:<{width}}  sha256:{digest[:16]}" for pid, digest in sorted(info.policies.items())
        )
    return "\n".join(lines) + "\n"


#: `bundle list` columns.
LIST_COLUMNS = ("REVISION", "CREATED", "CHANNELS", "POLICIES", "COMMIT", "MESSAGE")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numbers: Collection[str] = ()) -> str:
    """Columns as wide as their widest cell, two spaces apart; `numbers` right-aligned, the last one free."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers) - 1)]
    lines = []
    for row in (headers, *rows):
        cells = [
            cell.rjust(width) if header in numbers else cell.ljust(width)
            for cell, width, header in zip(row, widths, headers, strict=False)
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


@click.group("bundle")
def bundle() -> None:
    """The versioned bundle store: publish, inspect, compare, promote, roll back, verify, clean up."""


@bundle.command("publish")
@click.argument("bundle_file", metavar="BUNDLE", type=click.Path(path_type=Path, dir_okay=False))
@store_option
@click.option("--channel", default="stable", show_default=True, help="Channel to point at the revision.")
@click.option("--no-channel", is_flag=True, help="Only record the revision; move no channel.")
@click.option("-m", "--message", help="Why (default: the Git commit's subject, when known).")
@click.option("--author", help="Who (default: the Git commit's author, when known).")
@_format_option
@errors_exit_2
def publish(
    bundle_file: Path,
    store: BundleStore,
    channel: str,
    no_channel: bool,
    message: str | None,
    author: str | None,
    output_format: str,
) -> None:
    """Record BUNDLE as an immutable revision and point --channel at it."""
    target = None if no_channel else channel
    info = store.publish(bundle_file, target, message=message, author=author)
    channels = [target] if target else []
    text = f"published revision {info.revision}" + (f" to channel {target}" if target else "") + "\n"
    _emit(output_format, _info_json(info, channels), text)


@bundle.command("list")
@store_option
@_format_option
@errors_exit_2
def list_revisions(store: BundleStore, output_format: str) -> None:
    """List revisions, newest first, with the channels that point at them."""
    by_revision = _channels_by_revision(store)
    revisions = store.revisions()
    document = {
        "channels": store.channels(),
        "revisions": [_info_json(i, by_revision.get(i.revision, [])) for i in revisions],
    }
    rows = [
        (
            info.revision,
            info.created[:19],
            ",".join(by_revision.get(info.revision, [])) or "-",
            str(len(info.policies)),
            (info.git_commit or "-")[:8],
            info.message or "",
        )
        for info in revisions
    ]
    _emit(
        output_format,
        document,
        _table(LIST_COLUMNS, rows, {"POLICIES"}) if rows else f"no revisions in {store.location}\n",
    )


@bundle.command("show")
@click.argument("ref", metavar="REVISION|CHANNEL")
@store_option
@_format_option
@errors_exit_2
def show(ref: str, store: BundleStore, output_format: str) -> None:
    """Show a revision's metadata and per-policy digests (a channel name shows its current revision)."""
    info = store.info(store.resolve(ref))
    channels = _channels_by_revision(store).get(info.revision, [])
    document = {**_info_json(info, channels), "bundle": store.bundle_reference(info.revision)}
    _emit(output_format, document, _info_text(info, channels, policies=True))


@bundle.command("diff")
@click.argument("ref_a", metavar="REV_A")
@click.argument("ref_b", metavar="REV_B")
@store_option
@_format_option
@click.option("--exit-code", is_flag=True, help="Exit 1 when the policies differ.")
@errors_exit_2
def diff(ref_a: str, ref_b: str, store: BundleStore, output_format: str, exit_code: bool) -> None:
    """What changed from REV_A to REV_B, in policy terms (revisions, channels or bundle files)."""
    (path_a, label_a), (path_b, label_b) = _resolve(store, ref_a), _resolve(store, ref_b)
    result = diff_bundles(path_a, path_b, (label_a, label_b))
    _emit(output_format, result.as_json(), diff_text(result))
    sys.exit(EXIT_FINDINGS if exit_code and result.policies_differ else EXIT_OK)


@bundle.command("promote")
@click.argument("ref", metavar="REVISION|CHANNEL")
@click.option("--channel", required=True, help="Channel to move (created when new).")
@store_option
@_format_option
@errors_exit_2
def promote(ref: str, channel: str, store: BundleStore, output_format: str) -> None:
    """Point --channel at a stored revision (or at what another channel points at)."""
    revision = store.resolve(ref)
    before = store.channel_revision(channel)
    store.promote(revision, channel)
    document = {"channel": channel, "from": before, "to": revision}
    _emit(output_format, document, f"{channel}: {before or '(new)'} → {revision}\n")


@bundle.command("rollback")
@click.option("--channel", required=True, help="Channel to move back to its previous revision.")
@store_option
@_format_option
@errors_exit_2
def rollback(channel: str, store: BundleStore, output_format: str) -> None:
    """Move --channel back to the revision it pointed at before its last move."""
    before = store.channel_revision(channel)
    after = store.rollback(channel)
    document = {"channel": channel, "from": before, "to": after}
    _emit(output_format, document, f"{channel}: {before} → {after} (rolled back)\n")


@bundle.command("verify")
@click.argument("ref", metavar="BUNDLE")
@click.option(
    "--verification-key",
    "key_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="PEM public key or certificate (RS/PS/ES), or a file holding the HMAC secret (HS).",
)
@click.option(
    "--verification-key-id",
    "key_id",
    help="Require the signature to name this key id (default: accept any, like `opa run`).",
)
@click.option(
    "--signing-alg",
    type=click.Choice(ALGORITHMS),
    help="Expected algorithm (default: the token's, limited to the key's family).",
)
@click.option("--scope", default="", help="Scope the signature must carry (OPA's signing.scope).")
@click.option("--exclude-files-verify", "exclude", multiple=True, help="Glob of files not to verify.")
@store_option
@_format_option
@errors_exit_2
def verify(
    ref: str,
    key_file: Path,
    key_id: str | None,
    signing_alg: str | None,
    scope: str,
    exclude: tuple[str, ...],
    store: BundleStore,
    output_format: str,
) -> None:
    """Check BUNDLE's .signatures.json the way OPA does (BUNDLE: a file, revision or channel)."""
    path, label = _resolve(store, ref)
    problems = verify_bundle(
        path, read_key(key_file), signing_alg, key_id, scope=scope, exclude_files=exclude
    )
    if not Path(ref).is_file():
        info = store.info(store.resolve(ref))
        if hashlib.sha256(path.read_bytes()).hexdigest() != info.digest:
            problems.append(f"the stored bundle does not match its recorded sha256 {info.digest}")
    document = {"bundle": label, "path": str(path), "ok": not problems, "problems": problems}
    text = (
        f"{label}: signature verified\n"
        if not problems
        else "".join(f"{label}: {p}\n" for p in problems) + f"{label}: verification FAILED\n"
    )
    _emit(output_format, document, text)
    sys.exit(EXIT_FINDINGS if problems else EXIT_OK)


@bundle.command("gc")
@click.option("--keep", required=True, type=click.IntRange(min=0), help="How many newest revisions to keep.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@store_option
@_format_option
@errors_exit_2
def gc(keep: int, dry_run: bool, store: BundleStore, output_format: str) -> None:
    """Delete all but the newest --keep revisions; never one a channel points at or rolls back to."""
    deleted = store.gc(keep, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    text = f"{verb} {len(deleted)} revision{'' if len(deleted) == 1 else 's'}" + (
        ": " + ", ".join(deleted) if deleted else ""
    )
    _emit(output_format, {"dry_run": dry_run, "deleted": deleted}, text + "\n")


@click.command("impact")
@store_option
@click.option("--from", "from_ref", required=True, help="Revision, channel or bundle file now in force.")
@click.option("--to", "to_ref", required=True, help="Revision, channel or bundle file to roll out.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_format_option
@errors_exit_2
def impact_command(
    store: BundleStore, from_ref: str, to_ref: str, paths: tuple[Path, ...], output_format: str
) -> None:
    """Which AuthClients under PATHS a change from --from to --to newly denies, allows, or denies differently.

    Exit 1 when any client becomes newly denied.
    """
    (before, label_a), (after, label_b) = _resolve(store, from_ref), _resolve(store, to_ref)
    report = impact(before, after, list(paths), (label_a, label_b))
    for note in report.notes:
        click.echo(f"{note.position}: {note.level}: {note.message} [{note.code}]", err=True)
    _emit(output_format, report.as_json(), impact_text(report))
    failed = bool(report.of(NEWLY_DENIED)) or report.input_errors
    sys.exit(EXIT_FINDINGS if failed else EXIT_OK)
