"""The store through the real command line: dry runs only read, names never shadow each other, output
a person can read (issue 17, items 10, 11, 13 and 14)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from nauthera.store.folder import FolderStore

from ..conftest import EXAMPLE_POLICIES, EXAMPLES
from ..harness.cli import nauthera, read_only, write
from .conftest import with_revision

CONFIG_MAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"


@pytest.fixture
def store(example_bundle: Path, tmp_path: Path) -> Path:
    """A store with two revisions, `aaaa1111dddd` on stable and canary and `bbbb2222cccc` on nothing
    (set up through the API; the tests use the command line)."""
    bundles = FolderStore(tmp_path / "store")
    bundles.publish(with_revision(example_bundle, "bbbb2222cccc", tmp_path / "b.tar.gz"), None)
    bundles.publish(with_revision(example_bundle, "aaaa1111dddd", tmp_path / "a.tar.gz"), "stable")
    bundles.promote("aaaa1111dddd", "canary")
    return bundles.root


def test_impact_and_check_print_each_note_once(store: Path, example_bundle: Path, tmp_path: Path) -> None:
    clients = tmp_path / "inputs"
    shutil.copytree(EXAMPLES / "clients", clients)
    shutil.copy(EXAMPLES / "policies" / "prod-baseline.yaml", clients)
    write(clients, {"settings.yaml": CONFIG_MAP})
    runs = {
        "impact": ["impact", "--store", store, "--from", "stable", "--to", example_bundle, clients, clients],
        "check": ["check", "--bundle", example_bundle, clients, clients / "settings.yaml"],
    }
    for name, args in runs.items():
        completed = nauthera(*args, cwd=tmp_path)
        notes = [line for line in (completed.stdout + completed.stderr).splitlines() if "[skipped]" in line]
        assert len(notes) == 2, f"{name}: {notes}"
        assert len(set(notes)) == len(notes), f"{name} repeats a note: {notes}"


def test_gc_dry_run_only_reads_a_read_only_store(store: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    read_only(store)
    completed = nauthera(
        "bundle", "gc", "--keep", "0", "--dry-run", "--store", store, cwd=tmp_path, unprivileged=True
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "would delete 1 revision: bbbb2222cccc\n"
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    listed = nauthera("bundle", "list", "--store", store, cwd=tmp_path, unprivileged=True)
    assert listed.returncode == 0, listed.stderr


@pytest.mark.parametrize("channel", ["aaaa1111dddd", "aaaa1111", "bbbb"])
def test_a_channel_cannot_be_named_after_a_revision_or_its_prefix(
    store: Path, tmp_path: Path, channel: str
) -> None:
    promoted = nauthera("bundle", "promote", "stable", "--channel", channel, "--store", store, cwd=tmp_path)
    assert promoted.returncode == 2
    assert f"channel name {channel!r} would be read as revision" in promoted.stderr
    published = nauthera(
        "bundle",
        "publish",
        store / "revisions" / "aaaa1111dddd" / "bundle.tar.gz",
        "--channel",
        channel,
        "--store",
        store,
        cwd=tmp_path,
    )
    assert published.returncode == 2
    assert not (store / "channels" / f"{channel}.json").exists()


def test_a_revision_cannot_be_named_after_a_channel(
    store: Path, example_bundle: Path, tmp_path: Path
) -> None:
    bundle = with_revision(example_bundle, "canary", tmp_path / "canary.tar.gz")
    published = nauthera("bundle", "publish", bundle, "--no-channel", "--store", store, cwd=tmp_path)
    assert published.returncode == 2
    assert "revision 'canary' would hide the channel 'canary'" in published.stderr
    shown = nauthera("bundle", "show", "canary", "--store", store, cwd=tmp_path)
    assert shown.stdout.startswith("revision:    aaaa1111dddd\n")


def test_bundle_list_columns_line_up_with_several_channels(store: Path, tmp_path: Path) -> None:
    for channel in ("a-rather-long-channel-name", "x"):
        assert (
            nauthera(
                "bundle", "promote", "stable", "--channel", channel, "--store", store, cwd=tmp_path
            ).returncode
            == 0
        )
    lines = nauthera("bundle", "list", "--store", store, cwd=tmp_path).stdout.splitlines()
    header = lines[0]
    for column in ("CREATED", "CHANNELS", "COMMIT"):
        start = header.index(column)
        for row in lines[1:]:
            assert row[start - 1] == " " and row[start] != " ", f"{column} misaligned:\n" + "\n".join(lines)
    end = header.index("POLICIES") + len("POLICIES")
    count = str(EXAMPLE_POLICIES)  # right-aligned under its header
    assert all(row[end - len(count) : end] == count and row[end] == " " for row in lines[1:]), "\n".join(
        lines
    )


def test_a_short_prefix_names_the_four_character_minimum(store: Path, tmp_path: Path) -> None:
    completed = nauthera("bundle", "show", "aaa", "--store", store, cwd=tmp_path)
    assert completed.returncode == 2
    assert "a revision prefix needs at least 4 characters" in completed.stderr
    assert nauthera("bundle", "show", "aaaa", "--store", store, cwd=tmp_path).returncode == 0
