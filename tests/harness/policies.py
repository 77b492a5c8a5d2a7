"""Random policy repositories and random edits of them, for the incremental and delta property tests.

Policies draw from every dimension the compiler indexes and serializes: exact, glob and catch-all
namespaces, label selectors (keys with `/`), and namespace and label text with the characters a patch
path must escape (`/`, `~`, `%`), so whatever goes wrong with one of them shows up in a comparison.
Edits are the ones a Git repository sees: add, change, remove, rename a file, an invalid edit, a
duplicate policy, and a file with several documents.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API_VERSION = "auth.nauthera.io/v1alpha1"
_NAMESPACES = ["team-a", "team-b", "team-*", "*", "a/b*", "x~1*", "p%2F*", "ops-~0", "q%zz"]
_LABEL_KEYS = ["tier", "app.kubernetes.io/name", "k~1", "c%2F"]
_LABEL_VALUES = ["prod", "dev", "a~b", "x%y"]
_GRANTS = ["authorization_code", "refresh_token", "client_credentials", "implicit", "password"]
_METHODS = ["none", "client_secret_basic", "private_key_jwt"]
_TYPES = ["web", "spa", "native", "service", "device"]


def random_spec(rng: random.Random) -> dict[str, Any]:
    """An AuthPolicy spec that compiles, with a random mix of targets and constraints."""
    spec: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    kind = rng.choice(["namespaces", "labels", "expressions", "none"])
    if kind == "namespaces":
        targets["namespaces"] = rng.sample(_NAMESPACES, rng.randint(1, 3))
    elif kind == "labels":
        targets["clientSelector"] = {"matchLabels": {rng.choice(_LABEL_KEYS): rng.choice(_LABEL_VALUES)}}
    elif kind == "expressions":
        values = rng.sample(_LABEL_VALUES, 2)
        targets["clientSelector"] = {
            "matchExpressions": [{"key": rng.choice(_LABEL_KEYS), "operator": "In", "values": values}]
        }
    if rng.random() < 0.5:
        targets["applicationTypes"] = rng.sample(_TYPES, rng.randint(1, 2))
    if targets:
        spec["targets"] = targets
    if rng.random() < 0.7:
        spec["allowedGrantTypes"] = rng.sample(_GRANTS, rng.randint(1, 3))
    if rng.random() < 0.5:
        spec["token"] = {"accessTokenTTL": f"{rng.randint(1, 90)}m"}
    if rng.random() < 0.4:
        spec["allowedTokenEndpointAuthMethods"] = rng.sample(_METHODS, 2)
    if rng.random() < 0.3:
        spec["enforcePKCE"] = True
    if rng.random() < 0.3:
        spec["enforcementAction"] = rng.choice(["deny", "warn", "dryrun"])
    return spec


def document(name: str, spec: dict[str, Any], namespace: str = "security") -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AuthPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@dataclass
class RandomRepo:
    """A folder of policy files that `edit` changes the way a Git repository changes."""

    root: Path
    rng: random.Random
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    counter: int = 0

    def seed(self, count: int) -> None:
        for _ in range(count):
            self._add()

    def _name(self) -> str:
        self.counter += 1
        return f"p{self.counter}"

    def _write(self, relative: str, text: str) -> None:
        """Atomically, as editors and `git checkout` do: write beside, then rename."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.tmp")
        staged.write_text(text, encoding="utf-8")
        staged.replace(target)

    def _save(self, relative: str) -> None:
        docs = self.files[relative]
        self._write(relative, "---\n".join(json.dumps(d, indent=1) + "\n" for d in docs))

    def _add(self) -> str:
        folder = self.rng.choice(["", "team/", "team/deep/"])
        relative = f"{folder}{self._name()}.yaml"
        docs = [document(self._name(), random_spec(self.rng))]
        if self.rng.random() < 0.2:
            docs.append(document(self._name(), random_spec(self.rng)))
        self.files[relative] = docs
        self._save(relative)
        return f"add {relative}"

    def _valid(self) -> list[str]:
        return sorted(set(self.files) - self.broken)

    def edit(self) -> str:
        """One random edit; returns what it did (for failure messages)."""
        action = self.rng.choice(
            ["add", "change", "change", "change", "remove", "rename", "invalid", "duplicate", "repair"]
        )
        valid = self._valid()
        if action == "add" or not valid:
            return self._add()
        if self.broken and (action == "repair" or self.rng.random() < 0.7):
            # Breakage gets fixed soon, as in a repository whose CI rejects it.
            return self._repair(sorted(self.broken)[0])
        if action == "remove" and len(valid) == 1:
            action = "change"
        edits = {
            "remove": self._remove,
            "rename": self._rename,
            "invalid": self._invalidate,
            "duplicate": self._duplicate,
        }
        return edits.get(action, self._change)(self.rng.choice(valid))

    def _repair(self, relative: str) -> str:
        self.broken.discard(relative)
        if relative.startswith("twin-"):
            (self.root / relative).unlink()
            del self.files[relative]
        else:
            self._save(relative)
        return f"repair {relative}"

    def _remove(self, relative: str) -> str:
        (self.root / relative).unlink()
        del self.files[relative]
        return f"remove {relative}"

    def _rename(self, relative: str) -> str:
        target = f"renamed-{self._name()}.yaml"
        (self.root / relative).rename(self.root / target)
        self.files[target] = self.files.pop(relative)
        return f"rename {relative} -> {target}"

    def _invalidate(self, relative: str) -> str:
        self.broken.add(relative)
        broken = json.dumps(document("broken", {"token": {"accessTokenTTL": "7d"}}))
        self._write(relative, self.rng.choice([broken, "spec: [unclosed\n"]))
        return f"invalid {relative}"

    def _duplicate(self, relative: str) -> str:
        twin = f"twin-{self._name()}.yaml"
        self.files[twin] = [json.loads(json.dumps(self.files[relative][0]))]
        self.broken.add(twin)
        self._save(twin)
        return f"duplicate {relative} as {twin}"

    def change(self) -> str:
        """Give one valid policy new constraints (an edit that always publishes a new revision)."""
        return self._change(self.rng.choice(self._valid()))

    def _change(self, relative: str) -> str:
        docs = self.files[relative]
        docs[self.rng.randrange(len(docs))]["spec"] = random_spec(self.rng)
        self._save(relative)
        return f"change {relative}"
