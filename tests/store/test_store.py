"""The bundle store: immutable revisions, atomic channel moves, gc, concurrency and crash safety."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from nauthera.errors import InputError, NotABundleError
from nauthera.store.base import RevisionInfo, StoreError
from nauthera.store.folder import FolderStore
from nauthera.targets.opa.bundle import RevisionError, read_bundle, write_tarball
from nauthera.targets.opa.signing import sign_bundle

from ..conftest import EXAMPLE_POLICIES
from .conftest import Invoke, Keys, with_revision

REPO = Path(__file__).resolve().parents[2]


def _assert_consistent(store: FolderStore) -> None:
    """Every channel names a complete revision whose bundle matches its recorded digest."""
    assert store.fsck() == []
    for channel, revision in store.channels().items():
        pointer = json.loads(store.pointer_file(channel).read_bytes())
        assert set(pointer) >= {"revision", "history", "updated"}
        content = store.bundle_path(revision).read_bytes()
        assert hashlib.sha256(content).hexdigest() == store.info(revision).digest, channel
        manifest = json.loads(read_bundle(store.bundle_path(revision))[".manifest"])
        assert manifest["revision"] == revision


def _git_repo_bundle(example_bundle: Path, tmp_path: Path) -> tuple[Path, str]:
    """A bundle whose manifest names a commit of a real Git repository holding the bundle."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=alice@example.com", "-c", "user.name=Alice"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README").write_text("policies\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "Tighten web tokens"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    files = read_bundle(example_bundle)
    manifest = json.loads(files[".manifest"])
    manifest["metadata"]["nauthera"]["git"] = {"commit": commit, "dirty": False}
    manifest["revision"] = "from-git"
    files[".manifest"] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    target = repo / "build" / "bundle.tar.gz"
    target.parent.mkdir()
    write_tarball(files, target)
    return target, commit


def test_publish_records_an_immutable_revision_with_metadata(example_bundle: Path, tmp_path: Path) -> None:
    bundle, commit = _git_repo_bundle(example_bundle, tmp_path)
    store = FolderStore(tmp_path / "store")
    assert not (tmp_path / "store").exists(), "the layout is created on the first write"
    info = store.publish(bundle)
    assert info.revision == "from-git"
    assert info.sequence == 1
    assert info.parent is None
    assert info.git_commit == commit
    assert info.author == "Alice <alice@example.com>"
    assert info.message == "Tighten web tokens"
    assert info.signer_key_id is None
    assert info.digest == hashlib.sha256(bundle.read_bytes()).hexdigest()
    data = json.loads(read_bundle(bundle)["nauthera_data/data.json"])
    assert info.policies == {
        pid: hashlib.sha256(
            json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
        for pid, params in data["policies"].items()
    }
    assert len(info.policies) == EXAMPLE_POLICIES
    assert store.channels() == {"stable": "from-git"}
    assert store.bundle_path("from-git").read_bytes() == bundle.read_bytes()
    assert store.info("from-git") == info
    assert RevisionInfo.from_json(info.as_json()) == info
    explicit = store.publish(
        with_revision(example_bundle, "r2", tmp_path / "r2.tar.gz"), message="why", author="bob"
    )
    assert (explicit.parent, explicit.sequence, explicit.author, explicit.message) == (
        "from-git",
        2,
        "bob",
        "why",
    )
    assert [r.revision for r in store.revisions()] == ["r2", "from-git"]
    _assert_consistent(store)


def test_publishing_the_same_bytes_is_idempotent_and_different_bytes_are_refused(
    example_bundle: Path, tmp_path: Path
) -> None:
    store = FolderStore(tmp_path / "store")
    first = store.publish(example_bundle)
    again = store.publish(example_bundle, "canary")
    assert again == first
    assert store.channels() == {"canary": first.revision, "stable": first.revision}
    assert len(store.revisions()) == 1
    changed = with_revision(
        example_bundle, first.revision, tmp_path / "other.tar.gz", {"nauthera/extra/data.json": b"{}"}
    )
    with pytest.raises(StoreError, match="already published with different content"):
        store.publish(changed)
    assert store.bundle_path(first.revision).read_bytes() == example_bundle.read_bytes()


def test_signer_key_id_is_recorded(example_bundle: Path, keys: Keys, tmp_path: Path) -> None:
    signed = with_revision(example_bundle, "signed", tmp_path / "signed.tar.gz")
    sign_bundle(signed, keys.rsa_private.read_bytes(), "RS256", "release-2025")
    info = FolderStore(tmp_path / "store").publish(signed, None)
    assert info.signer_key_id == "release-2025"


def test_promote_and_rollback_restore_byte_identical_content(example_bundle: Path, tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    bundles = {
        name: with_revision(example_bundle, name, tmp_path / f"{name}.tar.gz") for name in ("a", "b", "c")
    }
    for name in ("a", "b", "c"):
        store.publish(bundles[name], "stable")
    store.promote("a", "canary")
    assert store.channels() == {"canary": "a", "stable": "c"}
    assert store.channel_history("stable") == ["b", "a"]
    assert store.rollback("stable") == "b"
    assert store.bundle_path(store.channel_revision("stable") or "").read_bytes() == bundles["b"].read_bytes()
    assert store.rollback("stable") == "a"
    assert store.bundle_path(store.channel_revision("stable") or "").read_bytes() == bundles["a"].read_bytes()
    with pytest.raises(StoreError, match="no earlier revision"):
        store.rollback("stable")
    with pytest.raises(StoreError, match="unknown channel"):
        store.rollback("nightly")
    with pytest.raises(StoreError, match="unknown revision"):
        store.promote("zzz", "stable")
    store.promote("c", "stable")
    store.promote("c", "stable")  # no move: history does not fill with repeats
    assert store.channel_history("stable") == ["a"]
    _assert_consistent(store)


def test_every_move_replaces_the_pointer_file(example_bundle: Path, tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    store.publish(with_revision(example_bundle, "a", tmp_path / "a.tar.gz"))
    pointer = store.pointer_file("stable")
    seen = [(pointer.stat().st_ino, pointer.read_bytes())]
    store.publish(with_revision(example_bundle, "b", tmp_path / "b.tar.gz"))
    seen.append((pointer.stat().st_ino, pointer.read_bytes()))
    store.rollback("stable")
    seen.append((pointer.stat().st_ino, pointer.read_bytes()))
    inodes = [inode for inode, _ in seen]
    assert inodes[0] != inodes[1] != inodes[2], "written beside and renamed over, never in place"
    assert [json.loads(content)["generation"] for _, content in seen] == [1, 2, 3]
    assert [json.loads(content)["revision"] for _, content in seen] == ["a", "b", "a"]
    assert store.pointer_file("new-channel") == tmp_path / "store" / "channels" / "new-channel.json"


def test_gc_keeps_the_newest_and_everything_a_channel_needs(example_bundle: Path, tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    for index in range(1, 7):
        store.publish(with_revision(example_bundle, f"r{index}", tmp_path / f"r{index}.tar.gz"), None)
    store.promote("r1", "stable")
    store.promote("r2", "stable")  # rollback target r1
    store.promote("r3", "canary")
    (tmp_path / "store" / "tmp" / "rev-x.123.abcd").mkdir()  # what a killed publisher leaves
    assert store.gc(1, dry_run=True) == ["r5", "r4"]
    assert len(store.revisions()) == 6
    assert store.gc(1) == ["r5", "r4"]
    assert [r.revision for r in store.revisions()] == ["r6", "r3", "r2", "r1"]
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert store.rollback("stable") == "r1"
    assert store.gc(0) == ["r6", "r2"]
    assert store.channels() == {"canary": "r3", "stable": "r1"}
    with pytest.raises(StoreError):
        store.gc(-1)
    _assert_consistent(store)


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden", "", "x" * 200, "a b"])
def test_unsafe_revision_and_channel_names_are_refused(
    example_bundle: Path, tmp_path: Path, bad: str
) -> None:
    store = FolderStore(tmp_path / "store")
    with pytest.raises((StoreError, RevisionError)):
        store.publish(with_revision(example_bundle, bad or "-", tmp_path / "bad.tar.gz"))
    with pytest.raises(StoreError):
        store.publish(example_bundle, bad)
    with pytest.raises((StoreError, RevisionError)):
        store.bundle_path(bad)
    assert not (tmp_path / "escape").exists()


def test_not_a_bundle_is_an_input_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not gzip")
    with pytest.raises(NotABundleError, match="not a Nauthera bundle"):
        FolderStore(tmp_path / "store").publish(junk)
    with pytest.raises(InputError, match="no such bundle"):
        FolderStore(tmp_path / "store").publish(tmp_path / "missing.tar.gz")


_PUBLISHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nauthera.store.folder import FolderStore

    store = FolderStore(Path(sys.argv[1]))
    for bundle in sys.argv[3:]:
        store.publish(Path(bundle), sys.argv[2])
    """
)


def _python(*args: str | Path) -> list[str]:
    return [sys.executable, "-c", _PUBLISHER, *map(str, args)]


def test_concurrent_publishers_record_every_revision(example_bundle: Path, tmp_path: Path) -> None:
    workers, per_worker = 6, 4
    batches = [
        [
            with_revision(example_bundle, f"w{w}-{i}", tmp_path / "in" / f"w{w}-{i}.tar.gz")
            for i in range(per_worker)
        ]
        for w in range(workers)
    ]
    root = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO / "compiler")}
    processes = [
        subprocess.Popen(_python(root, "stable" if w % 2 else f"team-{w}", *batch), env=env)
        for w, batch in enumerate(batches)
    ]
    assert [p.wait(timeout=120) for p in processes] == [0] * workers
    store = FolderStore(root)
    revisions = store.revisions()
    assert {r.revision for r in revisions} == {
        b.name.removesuffix(".tar.gz") for batch in batches for b in batch
    }
    assert sorted(r.sequence for r in revisions) == list(range(1, workers * per_worker + 1))
    stable = json.loads(store.pointer_file("stable").read_bytes())
    stable_published = {
        b.name.removesuffix(".tar.gz") for w, batch in enumerate(batches) if w % 2 for b in batch
    }
    assert {stable["revision"], *stable["history"]} == stable_published
    for w in range(0, workers, 2):
        assert store.channel_revision(f"team-{w}") == f"w{w}-{per_worker - 1}"
    assert list((root / "tmp").iterdir()) == []
    _assert_consistent(store)


def _large_bundle(example_bundle: Path, revision: str, target: Path, filler: bytes) -> Path:
    """The example bundle plus ~16 MB of filler data, so a publish takes a while to write.

    Written with gzip level 1 (any gzip'd tar is a bundle) to keep the test fast.
    """
    files = read_bundle(with_revision(example_bundle, revision, target))
    files["nauthera/filler/data.json"] = filler
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return target


def _exists(folder: Path, pattern: str) -> bool:
    return any(folder.glob(pattern))


def _kill_when(child: subprocess.Popen[bytes], event: Callable[[], bool], delay: float) -> None:
    """SIGKILL `child` `delay` seconds after `event()` is seen (or when it exits first)."""
    deadline = time.monotonic() + 60
    while child.poll() is None and not event() and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)


def test_a_publish_killed_at_any_instant_leaves_the_store_consistent(
    example_bundle: Path, tmp_path: Path
) -> None:
    """SIGKILL a publishing process at random instants, and at the riskiest ones: while it writes the
    revision, and between the revision's rename and the channel's move. Each time every channel still
    names a complete revision matching its digest, and repeating the publish completes it."""
    root = tmp_path / "store"
    store = FolderStore(root)
    store.publish(with_revision(example_bundle, "base", tmp_path / "base.tar.gz"), "stable")
    env = {**os.environ, "PYTHONPATH": str(REPO / "compiler")}
    filler = json.dumps({"x": random.Random(7).randbytes(8_000_000).hex()}).encode()
    large = _large_bundle(example_bundle, "large-0", tmp_path / "large-0.tar.gz", filler)
    started = time.monotonic()
    subprocess.run(_python(root, "stable", large), env=env, check=True, timeout=120)
    full = time.monotonic() - started
    assert store.channel_revision("stable") == "large-0"
    chooser = random.Random(20240601)
    outcomes = {"before": 0, "after": 0}
    interrupted_writes = 0
    for attempt in range(1, 10):
        revision = f"large-{attempt}"
        bundle = _large_bundle(example_bundle, revision, tmp_path / "large.tar.gz", filler)
        child = subprocess.Popen(_python(root, "stable", bundle), env=env)
        staging = f"rev-{revision}.*"
        mode = attempt % 3
        if mode == 0:  # any instant
            _kill_when(child, lambda: True, chooser.uniform(0.0, full * 1.1))
        elif mode == 1:  # while the revision is being written into tmp/
            _kill_when(child, partial(_exists, root / "tmp", staging), chooser.uniform(0, 0.01))
        else:  # once the revision is in place, before (or while) the channel moves
            _kill_when(child, (root / "revisions" / revision).exists, 0.0)
        _assert_consistent(store)
        interrupted_writes += _exists(root / "tmp", staging)
        current = store.channel_revision("stable")
        assert current == revision or current == f"large-{attempt - 1}"
        outcomes["after" if current == revision else "before"] += 1
        if current != revision:
            store.publish(bundle, "stable")  # the interrupted publish can simply be repeated
            assert store.channel_revision("stable") == revision
        assert store.bundle_path(revision).read_bytes() == bundle.read_bytes()
        store.gc(2)  # keeps the next consistency check cheap; never touches what stable needs
    assert outcomes["before"] > 0, f"no kill landed mid-publish ({outcomes}, a publish takes {full:.2f}s)"
    assert interrupted_writes > 0, "no kill landed while a revision was being written"
    store.gc(3)
    assert list((root / "tmp").iterdir()) == []
    _assert_consistent(store)


def test_cli_publish_list_show_promote_rollback_gc(
    example_bundle: Path, tmp_path: Path, invoke: Invoke
) -> None:
    store = tmp_path / "store"
    a = with_revision(example_bundle, "rev-a", tmp_path / "a.tar.gz")
    b = with_revision(example_bundle, "rev-b", tmp_path / "b.tar.gz")
    published = invoke("bundle", "publish", a, "--store", store, "-m", "first", "--author", "alice")
    assert (published.exit_code, published.stdout) == (0, "published revision rev-a to channel stable\n")
    as_json = invoke("bundle", "publish", b, "--store", store, "--channel", "canary", "--format", "json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["revision"] == "rev-b"
    assert json.loads(as_json.stdout)["channels"] == ["canary"]
    listed = invoke("bundle", "list", "--store", store)
    assert listed.exit_code == 0
    assert listed.stdout.splitlines()[0].split() == [
        "REVISION",
        "CREATED",
        "CHANNELS",
        "POLICIES",
        "COMMIT",
        "MESSAGE",
    ]
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["rev-b", "rev-a"]
    listed_json = json.loads(invoke("bundle", "list", "--store", store, "--format", "json").stdout)
    assert listed_json["channels"] == {"canary": "rev-b", "stable": "rev-a"}
    assert [r["revision"] for r in listed_json["revisions"]] == ["rev-b", "rev-a"]
    shown = invoke("bundle", "show", "stable", "--store", store)
    assert shown.exit_code == 0
    assert "revision:    rev-a" in shown.stdout and "message:     first" in shown.stdout
    assert "security/web-apps-policy" in shown.stdout
    ambiguous = invoke("bundle", "show", "rev-", "--store", store)
    assert ambiguous.exit_code == 2, "an ambiguous prefix is an error, not a guess"
    assert "ambiguous" in ambiguous.stderr
    assert json.loads(invoke("bundle", "show", "rev-b", "--store", store, "--format", "json").stdout)[
        "channels"
    ] == ["canary"]
    promoted = invoke("bundle", "promote", "canary", "--channel", "stable", "--store", store)
    assert (promoted.exit_code, promoted.stdout) == (0, "stable: rev-a → rev-b\n")
    rolled = invoke("bundle", "rollback", "--channel", "stable", "--store", store, "--format", "json")
    assert json.loads(rolled.stdout) == {"channel": "stable", "from": "rev-b", "to": "rev-a"}
    again = invoke("bundle", "rollback", "--channel", "stable", "--store", store)
    assert again.exit_code == 2
    assert again.stderr == "nauthera: error: channel 'stable' has no earlier revision to roll back to\n"
    collected = invoke("bundle", "gc", "--keep", "0", "--store", store, "--format", "json")
    assert json.loads(collected.stdout) == {"dry_run": False, "deleted": []}
    assert invoke("bundle", "show", "nope", "--store", store).exit_code == 2
    assert invoke("bundle", "list", "--store", store, "--format", "yaml").exit_code == 2
    assert invoke("bundle", "gc", "--keep", "-1", "--store", store).exit_code == 2
    empty = invoke("bundle", "list", "--store", tmp_path / "empty")
    assert (empty.exit_code, empty.stdout) == (0, f"no revisions in {tmp_path / 'empty'}\n")
    assert not (tmp_path / "empty").exists(), "reading never creates a store"


def test_cli_publish_without_channel(example_bundle: Path, tmp_path: Path, invoke: Invoke) -> None:
    result = invoke("bundle", "publish", example_bundle, "--store", tmp_path / "s", "--no-channel")
    assert result.exit_code == 0
    assert FolderStore(tmp_path / "s").channels() == {}
