"""Push mode: load policy and data into an OPA over its REST API, for setups without bundle polling.

Kept apart from the sidecar so that its client libraries (opa-python-client, which brings aiohttp, and
requests) are loaded only when `--push-to` asks for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from opa_client.errors import PolicyNotFoundError
from opa_client.opa import OpaClient

from nauthera.errors import NautheraError
from nauthera.serve.bundles import in_daemon_thread
from nauthera.store.base import BundleStore
from nauthera.targets.opa.bundle import DATA_FILE, DATA_ROOT, read_bundle

log = logging.getLogger("nauthera.sidecar")
#: Where a pushed OPA records which revision it holds, beside (not inside) the bundle's roots.
PUSH_MARKER = "nauthera_sidecar"


class OpaPusher:
    """Loads policy and data into one OPA over its REST API (opa-python-client), for setups without
    bundle polling, and loads them again when that OPA comes back empty after a restart."""

    def __init__(self, url: str, token: str | None = None) -> None:
        parts = urlsplit(url)
        if not parts.hostname:
            raise NautheraError(f"--push-to {url!r}: expected a URL like http://127.0.0.1:8181")
        self.url = url
        #: What /readyz shows: the revision the OPA holds (as far as we know) and the last failure.
        self.status: dict[str, Any] = {"url": url, "revision": None, "error": None, "failures": 0}
        self.client = OpaClient(
            host=parts.hostname,
            port=parts.port or 8181,
            ssl=parts.scheme == "https",
            token=token,
            timeout=5.0,
        )

    def holds(self, revision: str, modules: Sequence[str]) -> bool:
        """Whether the OPA has this revision: the marker (written last) and every module. Checking the
        modules too catches an OPA that restarted mid-push and got only the marker."""
        try:
            marker = self.client.get_data(PUSH_MARKER)["result"]
            loaded = set(self.client.get_policies_list())
        except (PolicyNotFoundError, ValueError, KeyError, TypeError):
            return False  # an OPA that answers without our revision; one that does not answer raises
        return isinstance(marker, dict) and marker.get("revision") == revision and set(modules) <= loaded

    def push(self, bundle: Path, revision: str) -> None:
        files = read_bundle(bundle)
        self._push_modules({name: c.decode() for name, c in files.items() if name.endswith(".rego")})
        self.client.update_or_create_data(json.loads(files[DATA_FILE]), DATA_ROOT)
        self.client.update_or_create_data({"revision": revision}, PUSH_MARKER)
        log.info("pushed revision %s to %s", revision, self.url)

    def _push_modules(self, modules: dict[str, str]) -> None:
        """OPA compiles each PUT against the modules it already has, so a module whose imports are not
        there yet is retried after the others: rounds until everything is in or nothing moves."""
        pending = dict(sorted(modules.items()))
        while pending:
            refused: dict[str, str] = {}
            last_error: Exception | None = None
            for name, text in pending.items():
                try:
                    self.client.update_policy_from_string(text, name, rego_compat=False)
                except Exception as error:  # opa-python-client raises bare error types of its own
                    refused[name], last_error = text, error
            if len(refused) == len(pending) and last_error is not None:
                raise last_error
            pending = refused

    async def keep_loaded(
        self,
        store: BundleStore,
        channel: str,
        interval: float = 1.0,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        """Push on every new revision of `channel`, and again whenever the OPA lost what it had (a
        restart); a failure (OPA down, answering errors, hanging past the client's timeout) is kept in
        `status` and counted through `on_failure`, and the next round tries again."""
        while True:
            try:
                revision = store.channel_revision(channel)
                if revision:
                    bundle = store.bundle_path(revision)
                    modules = [name for name in read_bundle(bundle) if name.endswith(".rego")]
                    if not await in_daemon_thread(self.holds, revision, modules):
                        await in_daemon_thread(self.push, bundle, revision)
                    self.status.update(revision=revision, error=None)
            except (requests.RequestException, NautheraError, OSError) as error:
                self._failed(f"cannot push to {self.url} yet: {error}", on_failure)
            except Exception as error:  # opa-python-client raises bare error types of its own
                self._failed(f"OPA at {self.url} refused the push: {error}", on_failure)
            await asyncio.sleep(interval)

    def _failed(self, problem: str, on_failure: Callable[[], None] | None) -> None:
        log.warning("%s", problem)
        self.status.update(error=problem[:500], failures=self.status["failures"] + 1)
        if on_failure is not None:
            on_failure()
