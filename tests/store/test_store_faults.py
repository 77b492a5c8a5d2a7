"""Issue 16: the store under faults. A truncated meta.json, a channel naming a missing or corrupt
revision, a disk that fills up mid-publish (RLIMIT_FSIZE on the real CLI), and SIGKILLs at random
moments of publish, promote, rollback and gc: every command reports a clear error, the server keeps
serving the last good revision (visible in /readyz and /metrics), and no revision is lost or changed."""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from nauthera.store.folder import FolderStore

from ..harness.cli import nauthera as run_cli
from ..harness.processes import Process, free_port, nauthera, wait_until
from ..harness.reliability import Reliability
from .conftest import with_revision

ERROR = re.compile(r"^nauthera: error: .+", re.MULTILINE)


@dataclass
class Served:
    store: Path
    process: Process
    url: str

    def etag(self) -> str:
        response = requests.get(f"{self.url}/bundles/stable", timeout=5)
        assert response.status_code == 200, response.text
        return str(response.headers["etag"]).strip('"')

    def body_digest(self) -> str:
        return hashlib.sha256(requests.get(f"{self.url}/bundles/stable", timeout=5).content).hexdigest()

    def faults(self) -> dict[str, str]:
        readiness = requests.get(f"{self.url}/readyz", timeout=5)
        assert readiness.status_code == 200, readiness.text
        faults: dict[str, str] = readiness.json()["faults"]
        return faults

    def metric(self, name: str) -> float:
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, name
        return float(match.group(1))


@pytest.fixture
def bundles(tmp_path: Path, example_bundle: Path) -> list[Path]:
    return [with_revision(example_bundle, f"rev-{i}", tmp_path / "bundles" / f"{i}.tar.gz") for i in range(5)]


@pytest.fixture
def served(tmp_path: Path, bundles: list[Path]) -> Iterator[Served]:
    store = tmp_path / "store"
    FolderStore(store).publish(bundles[0], "stable")
    port = free_port()
    process = nauthera("serve", "--store", store, "--listen", f"127.0.0.1:{port}", log=tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200, 30, "ready")
        yield Served(store, process, url)
    finally:
        process.stop(timeout=2)
    assert "Traceback" not in process.output()


def _fails_clearly(*args: str | Path, **kwargs: int) -> str:
    """Run the CLI, expect exit 2 with one `nauthera: error:` line; return that line."""
    completed = _cli(*args, **kwargs)
    assert completed.returncode == 2, (completed.returncode, completed.stdout, completed.stderr)
    match = ERROR.search(completed.stderr)
    assert match, completed.stderr
    return _shown(match.group(0))


def _shown(text: str) -> str:
    """`text` for docs/reliability.md, with the store's temporary path shown as STORE."""
    return re.sub(r"/\S*?/store\b", "STORE", text)


def _cli(*args: str | Path, file_size_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, file_size_limit=file_size_limit)


def _digests(store: Path) -> dict[str, str]:
    return {
        path.parent.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (store / "revisions").glob("*/bundle.tar.gz")
    }


def test_server_keeps_the_last_good_revision_through_store_faults(
    served: Served, bundles: list[Path], reliability: Reliability
) -> None:
    store = FolderStore(served.store)
    good = served.etag()
    pointer = store.pointer_file("stable")

    # A channel naming a revision that is not stored.
    pointer.write_text(json.dumps({"channel": "stable", "revision": "rev-missing", "history": [good]}))
    wait_until(lambda: "stable" in served.faults(), 5, "the fault in /readyz")
    assert served.etag() == good and served.metric("nauthera_channels_faulty") == 1
    fault = _shown(served.faults()["stable"])
    reliability.add(
        "store", "channel points at a missing revision", f"still serving the last good; /readyz: {fault}"
    )

    # A truncated channel pointer.
    pointer.write_text('{"channel": "stable", "revis')
    wait_until(lambda: "unreadable channel pointer" in served.faults().get("stable", ""), 5, "the fault")
    assert served.etag() == good
    line = _fails_clearly("bundle", "list", "--store", served.store)
    reliability.add(
        "store", "truncated channel pointer", f"still serving the last good; `bundle list`: exit 2, {line}"
    )
    pointer.write_text(json.dumps({"channel": "stable", "revision": good, "history": []}))
    wait_until(lambda: not served.faults(), 5, "the fault to clear")

    # A corrupt revision (its bundle changed after publishing) promoted to the channel.
    corrupt = store.publish(bundles[1], None).revision
    bundle_file = store.bundle_path(corrupt)
    content = bytearray(bundle_file.read_bytes())
    content[len(content) // 2] ^= 0xFF
    bundle_file.write_bytes(bytes(content))
    assert _cli("bundle", "promote", corrupt, "--channel", "stable", "--store", served.store).returncode == 0
    wait_until(
        lambda: "does not match" in served.faults().get("stable", ""), 5, "the corrupt revision refused"
    )
    faults = served.metric("nauthera_store_faults_total")
    assert served.etag() == good and faults >= 3
    reliability.add(
        "store",
        "channel promoted to a revision whose bundle changed on disk",
        f"refused (sha256 differs), still serving the last good; {faults:.0f} faults counted",
    )

    # A truncated meta.json of the revision being served: reading commands say so.
    meta = served.store / "revisions" / good / "meta.json"
    meta.write_text(meta.read_text()[:40])
    line = _fails_clearly("bundle", "show", good, "--store", served.store)
    assert "unreadable revision metadata" in line
    assert served.etag() == good
    reliability.add(
        "store",
        "truncated meta.json of the served revision",
        f"still serving it; `bundle show`: exit 2, {line[:140]}",
    )
    line = _fails_clearly("bundle", "promote", "rev-missing", "--channel", "stable", "--store", served.store)
    reliability.add("store", "promote to a missing revision", f"exit 2, {line}")

    # Recovery: a good publish moves the channel and clears the fault.
    fresh = store.publish(bundles[2], "stable").revision
    wait_until(lambda: served.etag() == fresh and not served.faults(), 5, "recovery")
    assert served.metric("nauthera_channels_faulty") == 0
    reliability.add(
        "store", "recovery after the faults", "the next good publish is served, /readyz faults empty"
    )


def test_a_full_disk_mid_publish_leaves_the_store_as_it_was(
    served: Served, bundles: list[Path], reliability: Reliability
) -> None:
    before = _digests(served.store)
    pointer = FolderStore(served.store).pointer_file("stable").read_bytes()
    size = bundles[1].stat().st_size
    line = _fails_clearly("bundle", "publish", bundles[1], "--store", served.store, file_size_limit=size // 2)
    assert "cannot write revision rev-1" in line and "File too large" in line, line
    assert _digests(served.store) == before
    assert FolderStore(served.store).pointer_file("stable").read_bytes() == pointer
    assert list((served.store / "tmp").iterdir()) == [], "the failed publish left its staging behind"
    assert FolderStore(served.store).fsck() == []
    assert served.etag() == "rev-0"
    reliability.add(
        "store",
        "disk full mid-publish (RLIMIT_FSIZE at half the bundle)",
        f"{line}; exit 2, store unchanged, nothing staged left",
    )


KILLS = 16


def test_sigkill_at_random_moments_loses_and_changes_no_revision(
    served: Served, bundles: list[Path], reliability: Reliability
) -> None:
    """Run publish, promote, rollback and gc in a child and SIGKILL it at a random moment of its run
    (calibrated on a complete run), over and over. After every kill: each stored revision is intact,
    each channel names a complete revision, and the server serves the channel's revision."""
    store = FolderStore(served.store)
    for bundle in bundles[1:3]:
        store.publish(bundle, "stable")
    rng = random.Random(16)
    recorded = _digests(served.store)
    started = time.monotonic()
    subprocess.run(  # a complete run (it deletes nothing) sets the time scale of the kills
        [sys.executable, "-m", "nauthera", "bundle", "gc", "--keep", "100", "--store", served.store],
        check=True,
        capture_output=True,
    )
    runtime = time.monotonic() - started
    killed_in: dict[str, int] = {}
    for index in range(KILLS):
        operation = rng.choice(["publish", "promote", "rollback", "gc"])
        args = {
            "publish": ["publish", bundles[3 + index % 2], "--channel", rng.choice(["stable", "beta"])],
            "promote": ["promote", rng.choice(sorted(recorded)), "--channel", rng.choice(["stable", "beta"])],
            "rollback": ["rollback", "stable"],
            "gc": ["gc", "--keep", "2"],
        }[operation]
        child = subprocess.Popen(
            [sys.executable, "-m", "nauthera", "bundle", *map(str, args), "--store", str(served.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.5, 1.0) * runtime)
        child.send_signal(signal.SIGKILL)
        code = child.wait(timeout=30)
        if code == -signal.SIGKILL:
            killed_in[operation] = killed_in.get(operation, 0) + 1
        # Every revision still stored is the one recorded (gc may delete unprotected ones).
        now = _digests(served.store)
        for revision, digest in now.items():
            assert recorded.setdefault(revision, digest) == digest, f"revision {revision} changed"
            store.verified_bundle(revision)
        for channel, revision in store.channels().items():
            assert revision in now, f"after killing {operation}: channel {channel} names missing {revision}"
        assert store.fsck() == []
        wait_until(lambda: served.etag() == store.channel_revision("stable"), 5, "the server to follow")
        assert served.body_digest() == recorded[store.channel_revision("stable") or ""]
    assert sum(killed_in.values()) >= KILLS // 3, f"most runs finished before the kill: {killed_in}"
    assert served.faults() == {}
    kills = ", ".join(f"{op} {n}" for op, n in sorted(killed_in.items()))
    reliability.add(
        "store",
        f"SIGKILL at random moments of {KILLS} publish/promote/rollback/gc runs",
        f"killed before the end: {kills}; every stored revision intact (sha256), channels complete, served",
    )
