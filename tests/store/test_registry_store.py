"""The registry store (SPEC section 8) against a real distribution registry and real OPA agents."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from nauthera.engines.tools import find_tool
from nauthera.store.base import open_store
from nauthera.store.oci import CONFIG_TYPE, INFO_ANNOTATION, LAYER_TYPE, RegistryStore

from ..conftest import compile_to
from ..harness.cli import nauthera as run_cli
from ..harness.pki import CertificateAuthority
from ..harness.processes import Process, decide, free_port, nauthera, opa_agent, stop_all, wait_until
from ..harness.processes import write_policy as write_policy_file
from ..harness.registry import Registry, TokenIssuer, start_registry
from ..serve.test_sidecar_e2e import ALLOWING, CLIENT, DENYING
from .conftest import Keys, with_revision

USER, PASSWORD = "publisher", "s3cret-pa55word"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = start_registry(tmp_path_factory.mktemp("plain-registry"))
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """TLS with a private CA and htpasswd (bcrypt) basic auth."""
    work = tmp_path_factory.mktemp("tls-registry")
    registry = start_registry(work, ca=CertificateAuthority(work / "pki"), users={USER: PASSWORD})
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two bundles that decide CLIENT differently."""
    work = tmp_path_factory.mktemp("registry-bundles")
    result = {}
    for name, spec in (("allowing", ALLOWING), ("denying", DENYING)):
        folder = work / f"{name}-policies"
        folder.mkdir()
        write_policy_file(folder, "grants", spec)
        result[name] = compile_to(folder, work / name)
    return result


def _allowed(opa_url: str) -> bool | None:
    decision = decide(opa_url, CLIENT)
    return None if decision is None else bool(decision["allowed"])


def _cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


def _deployed_oci_agent(registry: Registry, repository: str, server: str, work: Path) -> tuple[Process, str]:
    """OPA run with deploy/opa/oci-config.yaml, pointed at this registry and server (no credentials:
    the plain registry has none), polling every second."""
    config = yaml.safe_load((REPO / "deploy" / "opa" / "oci-config.yaml").read_text())
    config["services"]["registry"] = {"url": registry.url, "type": "oci"}
    config["services"]["nauthera"] = {"url": server}
    config["bundles"]["stable"]["resource"] = f"{registry.host}/{repository}:stable"
    config["bundles"]["stable"]["polling"] = {"min_delay_seconds": 1, "max_delay_seconds": 1}
    config["persistence_directory"] = str(work / "oci-agent-persist")
    config["labels"]["name"] = "oci-agent"
    config_file = work / "oci-agent.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    args = [find_tool("opa"), "run", "--skip-version-check", "--server", "--addr", f"127.0.0.1:{port}",
            "--config-file", config_file]  # fmt: skip
    return Process(args, work / "oci-agent.log").start(), f"http://127.0.0.1:{port}"


def test_publish_promote_rollback_flip_a_real_opa_pulling_over_oci(
    plain: Registry, bundles: dict[str, Path], tmp_path: Path
) -> None:
    store = plain.store("flip/bundles")
    published = _cli("bundle", "publish", bundles["allowing"], "--store", store, "--format", "json")
    assert published.returncode == 0, published.stderr
    allowing = json.loads(published.stdout)["revision"]
    port = free_port()
    server = nauthera("serve", "--store", store, "--listen", f"127.0.0.1:{port}", log=tmp_path / "serve.log")
    server_url = f"http://127.0.0.1:{port}"
    processes: list[Process] = [server]
    try:
        server.wait_ready(lambda: requests.get(f"{server_url}/healthz", timeout=2).ok, 30, "serve to start")
        agent, agent_url = _deployed_oci_agent(plain, "flip/bundles", server_url, tmp_path)
        # A second agent long-polls `nauthera serve`, which polls the registry's channel tag.
        http_agent, http_url = opa_agent(tmp_path, "http-agent", server_url)
        processes = [agent, http_agent, server]
        for url in (agent_url, http_url):
            wait_until(lambda url=url: _allowed(url) is True, 30, "the first bundle")

        denying_out = _cli("bundle", "publish", bundles["denying"], "--store", store, "--format", "json")
        assert denying_out.returncode == 0, denying_out.stderr
        denying = json.loads(denying_out.stdout)["revision"]
        for url in (agent_url, http_url):
            wait_until(lambda url=url: _allowed(url) is False, 20, "the publish to reach OPA")

        rolled = _cli("bundle", "rollback", "--channel", "stable", "--store", store)
        assert rolled.returncode == 0, rolled.stderr
        assert rolled.stdout == f"stable: {denying} → {allowing} (rolled back)\n"
        for url in (agent_url, http_url):
            wait_until(lambda url=url: _allowed(url) is True, 20, "the rollback to reach OPA")

        promoted = _cli("bundle", "promote", denying, "--channel", "stable", "--store", store)
        assert promoted.returncode == 0, promoted.stderr
        for url in (agent_url, http_url):
            wait_until(lambda url=url: _allowed(url) is False, 20, "the promotion to reach OPA")

        # Both agents report their status to `nauthera serve`: the fleet view names the OCI agent too.
        def fleet() -> dict[str, Any]:
            listed = _cli("agents", "--server", server_url, "--format", "json")
            agents = {a["labels"]["name"]: a for a in json.loads(listed.stdout)["agents"]}
            current = (
                all(a["bundles"]["stable"]["active_revision"] == denying for a in agents.values())
                and len(agents) == 2
            )
            return agents if current else {}

        agents = wait_until(fleet, 20, "both agents to report the promoted revision")
        assert not agents["oci-agent"]["stale"]
    finally:
        stop_all(processes)


def test_layout_is_spec_8_and_a_fresh_machine_lists_and_rolls_back(
    plain: Registry, bundles: dict[str, Path], tmp_path: Path
) -> None:
    store_url = plain.store("layout/bundles")
    first = open_store(store_url)
    one = first.publish(with_revision(bundles["allowing"], "rev-one", tmp_path / "1.tar.gz"), "stable")
    two = first.publish(with_revision(bundles["denying"], "rev-two", tmp_path / "2.tar.gz"), "stable")
    assert (one.revision, two.revision) == ("rev-one", "rev-two")

    session = plain.session()
    base = f"{plain.url}/v2/layout/bundles"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    manifest = session.get(f"{base}/manifests/rev-two", headers=accept, timeout=5)
    channel = session.get(f"{base}/manifests/stable", headers=accept, timeout=5)
    assert manifest.headers["docker-content-digest"] == channel.headers["docker-content-digest"]
    doc = manifest.json()
    assert doc["config"]["mediaType"] == CONFIG_TYPE
    assert session.get(f"{base}/blobs/{doc['config']['digest']}", timeout=5).content == b"{}"
    [layer] = doc["layers"]
    assert layer["mediaType"] == LAYER_TYPE
    content = (tmp_path / "2.tar.gz").read_bytes()
    assert layer["digest"] == "sha256:" + hashlib.sha256(content).hexdigest()
    assert session.get(f"{base}/blobs/{layer['digest']}", timeout=5).content == content
    assert json.loads(doc["annotations"][INFO_ANNOTATION])["revision"] == "rev-two"

    # A fresh process with only the URL: list, show, rollback.
    listed = _cli("bundle", "list", "--store", store_url, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["channels"] == {"stable": "rev-two"}
    assert [r["revision"] for r in document["revisions"]] == ["rev-two", "rev-one"]
    assert document["revisions"][0]["channels"] == ["stable"]
    shown = _cli("bundle", "show", "stable", "--store", store_url, "--format", "json")
    assert json.loads(shown.stdout)["bundle"] == f"{plain.host}/layout/bundles:rev-two"
    rolled = _cli("bundle", "rollback", "--channel", "stable", "--store", store_url)
    assert rolled.stdout == "stable: rev-two → rev-one (rolled back)\n", rolled.stderr
    assert open_store(store_url).channels() == {"stable": "rev-one"}
    again = _cli("bundle", "rollback", "--channel", "stable", "--store", store_url)
    assert again.returncode == 2
    assert "channel 'stable' has no earlier revision to roll back to" in again.stderr
    verified = _cli("bundle", "diff", "rev-one", "rev-two", "--store", store_url)
    assert verified.returncode == 0 and "allowedGrantTypes" in verified.stdout, verified.stderr
    client = tmp_path / "client.yaml"
    client.write_text(yaml.safe_dump(CLIENT))
    impact = _cli("impact", "--from", "rev-one", "--to", "rev-two", client, "--store", store_url)
    assert impact.returncode == 1, impact.stderr
    assert "newly denied: team-a/app" in impact.stdout


def test_names_that_cannot_be_tags_or_would_hide_each_other_are_refused(
    plain: Registry, bundles: dict[str, Path], tmp_path: Path
) -> None:
    store = plain.store("names/bundles")
    plus = with_revision(bundles["allowing"], "v1+build", tmp_path / "plus.tar.gz")
    refused = _cli("bundle", "publish", plus, "--store", store)
    assert refused.returncode == 2
    assert "revision 'v1+build' cannot be a registry tag" in refused.stderr
    good = with_revision(bundles["allowing"], "rev-abcdef", tmp_path / "good.tar.gz")
    assert _cli("bundle", "publish", good, "--store", store).returncode == 0
    hidden = _cli("bundle", "promote", "rev-abcdef", "--channel", "rev-abc", "--store", store)
    assert hidden.returncode == 2
    assert "channel name 'rev-abc' would be read as revision rev-abcdef" in hidden.stderr
    bad = _cli("bundle", "list", "--store", "oci://127.0.0.1:1/Upper/Case")
    assert bad.returncode == 2 and "is not a repository name" in bad.stderr
    ca = tmp_path / "ca.pem"
    ca.write_text("not used")
    folder = _cli("bundle", "list", "--store", tmp_path / "folder", "--registry-ca", ca)
    assert folder.returncode == 2 and "--registry-ca applies to oci:// stores" in folder.stderr
    from_env = _cli("bundle", "list", "--store", tmp_path / "folder", env={"NAUTHERA_REGISTRY_CA": str(ca)})
    assert from_env.returncode == 0, from_env.stderr


def test_credentials_ca_and_refusals_read_well(
    secured: Registry, bundles: dict[str, Path], tmp_path: Path
) -> None:
    store = secured.store("private/bundles")
    assert secured.ca is not None
    good = {"DOCKER_CONFIG": str(secured.docker_config(tmp_path / "good", USER))}
    wrong = {"DOCKER_CONFIG": str(secured.docker_config(tmp_path / "wrong", USER, "not-the-password"))}
    none = {"DOCKER_CONFIG": str(secured.docker_config(tmp_path / "none"))}
    publish = ("bundle", "publish", bundles["allowing"], "--store", store)

    untrusted = _cli(*publish, env=good)
    assert untrusted.returncode == 2
    assert f"registry {secured.host}: TLS verification failed" in untrusted.stderr
    assert "pass it with --registry-ca" in untrusted.stderr

    anonymous = _cli(*publish, "--registry-ca", secured.ca, env=none)
    assert anonymous.returncode == 2
    assert f"registry {secured.host} refused" in anonymous.stderr
    assert f"401 unauthorized (no credentials for {secured.host} in {tmp_path / 'none' / 'config.json'})" in (
        anonymous.stderr
    )

    rejected = _cli(*publish, "--registry-ca", secured.ca, env=wrong)
    assert rejected.returncode == 2
    assert "401 unauthorized (the credentials for" in rejected.stderr
    assert "not-the-password" not in rejected.stderr + rejected.stdout

    ok = _cli(*publish, "--registry-ca", secured.ca, env=good)
    assert ok.returncode == 0, ok.stderr
    listed = _cli("bundle", "list", "--store", store, "--registry-ca", secured.ca, env=good)
    assert listed.returncode == 0 and "stable" in listed.stdout, listed.stderr


def _tampered(bundle: Path, target: Path) -> Path:
    """The signed bundle with its data changed and its signature kept (and a revision of its own)."""
    members: dict[str, bytes] = {}
    with tarfile.open(bundle) as archive:
        for member in archive.getmembers():
            handle = archive.extractfile(member)
            if handle is not None:
                members[member.name.lstrip("/")] = handle.read()
    data_name = next(name for name in members if name.endswith("data.json"))
    data = json.loads(members[data_name])
    data.setdefault("tampered", True)
    members[data_name] = json.dumps(data).encode()
    manifest = json.loads(members[".manifest"])
    manifest["revision"] = "tampered"
    members[".manifest"] = json.dumps(manifest).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in sorted(members.items()):
            info = tarfile.TarInfo(f"/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    target.write_bytes(buffer.getvalue())
    return target


def test_opa_verifies_a_signed_bundle_over_tls_and_refuses_a_tampered_layer(
    secured: Registry, keys: Keys, tmp_path: Path
) -> None:
    assert secured.ca is not None
    env = {"DOCKER_CONFIG": str(secured.docker_config(tmp_path / "docker", USER))}
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy_file(policies, "grants", ALLOWING)
    compiled = _cli(
        "compile", policies, "--out", tmp_path / "signed", "--signing-key", keys.rsa_private,
        "--signing-alg", "RS256", "--signing-key-id", "release",
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    signed = tmp_path / "signed" / "bundle.tar.gz"
    store = secured.store("signed/bundles")
    ca = ("--registry-ca", secured.ca)
    assert _cli("bundle", "publish", signed, "--store", store, *ca, env=env).returncode == 0
    verified = _cli(
        "bundle", "verify", "stable", "--verification-key", keys.rsa_public, "--store", store, *ca, env=env
    )
    assert verified.returncode == 0 and "signature verified" in verified.stdout, verified.stderr

    agent, url = opa_agent(
        tmp_path,
        "signed-agent",
        "http://127.0.0.1:1",
        registry=secured.opa_source("signed/bundles", "stable", USER),
        decision_logs=False,
        keys={"release": {"algorithm": "RS256", "key": keys.rsa_public.read_text()}},
        signing={"keyid": "release"},
    )
    try:
        wait_until(lambda: _allowed(url) is True, 30, "OPA to activate the signed bundle from the registry")
        tampered = _tampered(signed, tmp_path / "tampered.tar.gz")
        published = _cli("bundle", "publish", tampered, "--store", store, *ca, env=env)
        assert published.returncode == 0, published.stderr
        wait_until(
            lambda: "Bundle load failed" in agent.output() and "digest mismatch" in agent.output(),
            20,
            "OPA to refuse the tampered bundle",
        )
        assert _allowed(url) is True  # still the signed revision
        data = requests.get(f"{url}/v1/data/tampered", timeout=5).json()
        assert "result" not in data
    finally:
        agent.stop()


RACER = """
import sys, time
from pathlib import Path
from nauthera.store.base import open_store
store = open_store(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all writers start at the same instant
for bundle in sys.argv[3:]:
    store.publish(Path(bundle), "stable")
"""


def test_racing_publishers_lose_no_revision_and_no_move(
    plain: Registry, bundles: dict[str, Path], tmp_path: Path
) -> None:
    store_url = plain.store("race/bundles")
    writers, each = 4, 5
    commands = []
    expected = set()
    for writer in range(writers):
        files = []
        for index in range(each):
            revision = f"w{writer}-r{index}"
            expected.add(revision)
            files.append(with_revision(bundles["allowing"], revision, tmp_path / f"{revision}.tar.gz"))
        commands.append([sys.executable, "-c", RACER, store_url, "START", *map(str, files)])
    start = str(time.time() + 3)
    commands = [[start if arg == "START" else arg for arg in command] for command in commands]
    racers = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands
    ]
    for racer in racers:
        _, stderr = racer.communicate(timeout=120)
        assert racer.returncode == 0, stderr

    store = RegistryStore(store_url)
    assert set(store.revision_names()) == expected
    pointer = store.channel_pointer("stable")
    assert pointer is not None
    moves = [pointer["revision"], *pointer["history"]]
    assert sorted(moves) == sorted(expected), "every publish is a move in the channel's history, once"
    assert store.channel_revision("stable") == pointer["revision"], "the channel tag ends where the log does"
    # Each writer's own moves keep their order.
    for writer in range(writers):
        mine = [m for m in reversed(moves) if m.startswith(f"w{writer}-")]
        assert mine == [f"w{writer}-r{i}" for i in range(each)]
    assert store.fsck() == []
    generations = [tag.split(".")[2] for tag in store._records_of("stable")]
    assert len(set(generations)) < len(generations), "writers raced: some wrote on the same generation"


def test_a_record_written_late_by_a_stale_writer_is_replayed_not_lost(
    plain: Registry, bundles: dict[str, Path], tmp_path: Path
) -> None:
    """A writer that read the log before another wrote (its record sorts before a newer one) does not
    lose either move: the newer record's snapshot is no longer trusted and its move is replayed."""
    store = RegistryStore(plain.store("stale/bundles"))
    for name in ("rev-a", "rev-b", "rev-c"):
        store.publish(with_revision(bundles["allowing"], name, tmp_path / f"{name}.tar.gz"), None)
    store.promote("rev-a", "stable")
    store.promote("rev-b", "stable")
    first, second = store._records_of("stable", fresh=True)
    assert store._record(second)["position"] == 1
    # A stale writer saw only the first record: same generation as rev-b's, a nonce that sorts first.
    stale_state = {
        "channel": "stable",
        "revision": "rev-c",
        "history": ["rev-a"],
        "updated": "x",
        "generation": 2,
    }
    store._put_record(
        "_ch.stable.0000000002.0000000000000000", {"revision": "rev-c", "position": 1, "state": stale_state}
    )
    store._settle("stable", [first, second])
    fresh = RegistryStore(plain.store("stale/bundles"))
    pointer = fresh.channel_pointer("stable")
    assert pointer is not None
    assert (pointer["revision"], pointer["history"]) == ("rev-b", ["rev-c", "rev-a"])
    assert fresh.channel_revision("stable") == "rev-b"
    assert fresh.rollback("stable") == "rev-c"
    assert fresh.rollback("stable") == "rev-a"


def test_gc_deletes_tags_where_allowed_and_says_so_where_refused(
    plain: Registry, bundles: dict[str, Path], tmp_path: Path
) -> None:
    store_url = plain.store("gc/bundles")
    store = open_store(store_url)
    for index in range(4):
        store.publish(
            with_revision(bundles["allowing"], f"gc-{index}", tmp_path / f"{index}.tar.gz"), "stable"
        )
    collected = _cli("bundle", "gc", "--keep", "0", "--store", store_url, "--format", "json")
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["deleted"] == ["gc-1", "gc-0"]
    tags = plain.tags("gc/bundles")
    assert {"gc-3", "gc-2", "stable"} <= set(tags) and not {"gc-1", "gc-0"} & set(tags)
    assert open_store(store_url).fsck() == []

    frozen = start_registry(tmp_path, delete=False, name="no-deletes")
    try:
        frozen_url = frozen.store("gc/bundles")
        frozen_store = open_store(frozen_url)
        for index in range(3):
            frozen_store.publish(
                with_revision(bundles["allowing"], f"gc-{index}", tmp_path / f"{index}.tar.gz")
            )
        refused = _cli("bundle", "gc", "--keep", "1", "--store", frozen_url)
        assert refused.returncode == 2
        assert f"registry {frozen.host} refused to delete revision gc-0" in refused.stderr
        assert "it does not allow deletes" in refused.stderr and "(deleted nothing)" in refused.stderr
        assert "gc-0" in frozen.tags("gc/bundles")
    finally:
        frozen.stop()


def test_the_sidecar_publishes_each_compile_to_the_registry_and_opa_pulls_it(
    plain: Registry, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy_file(policies, "grants", ALLOWING)
    store = plain.store("sidecar/bundles")
    port = free_port()
    sidecar = nauthera(
        "sidecar", "--source", policies, "--store", store, "--listen", f"127.0.0.1:{port}",
        "--debounce", "50ms", log=tmp_path / "sidecar.log",
    )  # fmt: skip
    processes: list[Process] = [sidecar]
    try:
        sidecar.wait_ready(
            lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, 60, "ready"
        )
        agent, url = opa_agent(
            tmp_path, "sidecar-oci-agent", f"http://127.0.0.1:{port}",
            registry=plain.opa_source("sidecar/bundles", "stable"), decision_logs=False,
        )  # fmt: skip
        processes = [agent, sidecar]
        wait_until(lambda: _allowed(url) is True, 30, "OPA to pull the sidecar's first compile")
        write_policy_file(policies, "grants", DENYING)
        wait_until(lambda: _allowed(url) is False, 30, "the edit to reach OPA through the registry")
        assert len(RegistryStore(store).revision_names()) == 2
    finally:
        stop_all(processes)


def test_a_bearer_token_registry_gets_a_token_fetched_with_docker_credentials(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """distribution's token auth (auth.token): the store follows the 401 challenge to the realm."""
    issuer = TokenIssuer(
        CertificateAuthority(tmp_path / "pki"), {USER: PASSWORD, "reader": "read-only"}, frozenset({"reader"})
    )
    registry = start_registry(tmp_path, tokens=issuer, name="token-registry")
    try:
        store = registry.store("tokens/bundles")
        good = {"DOCKER_CONFIG": str(tmp_path / "good")}
        (tmp_path / "good").mkdir()
        (tmp_path / "good" / "config.json").write_text(
            json.dumps({"auths": {f"http://{registry.host}/v2/": {"username": USER, "password": PASSWORD}}})
        )
        published = _cli("bundle", "publish", bundles["allowing"], "--store", store, env=good)
        assert published.returncode == 0, published.stderr
        assert issuer.issued >= 1
        listed = _cli("bundle", "list", "--store", store, "--format", "json", env=good)
        assert json.loads(listed.stdout)["channels"] == {
            "stable": json.loads(listed.stdout)["revisions"][0]["revision"]
        }

        wrong = {"DOCKER_CONFIG": str(registry.docker_config(tmp_path / "wrong", USER, "nope-nope"))}
        refused = _cli("bundle", "list", "--store", store, env=wrong)
        assert refused.returncode == 2
        assert (
            f"registry {registry.host} refused a token for list tags (from {issuer.realm}): 401"
            in refused.stderr
        )
        assert "nope-nope" not in refused.stderr

        reader = {"DOCKER_CONFIG": str(registry.docker_config(tmp_path / "reader", "reader", "read-only"))}
        listed_by_reader = _cli("bundle", "list", "--store", store, env=reader)
        assert listed_by_reader.returncode == 0, listed_by_reader.stderr
        pushed = _cli("bundle", "promote", "stable", "--channel", "canary", "--store", store, env=reader)
        assert pushed.returncode == 2
        assert f"registry {registry.host} refused" in pushed.stderr
        # The registry names the actions in either order.
        lacks = (
            r"401 insufficient scope \(the account lacks repository:tokens/bundles:(pull,push|push,pull)\)"
        )
        assert re.search(lacks, pushed.stderr), pushed.stderr
    finally:
        registry.stop()
        issuer.stop()
