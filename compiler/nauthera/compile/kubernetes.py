"""Kubernetes object conventions every layer shares: names, labels, and YAML that kubectl reads back.

Objects nauthera writes (Gatekeeper templates and Constraints, imported AuthClients) go through
`kubectl_yaml`, so they read back exactly as written with go-yaml (kubectl, gator) and PyYAML alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

#: A namespace (RFC 1123 label, at most 63 characters) and an object name (RFC 1123 subdomain, at
#: most 253 characters), as the API server checks them.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_NAMESPACE = 63
MAX_NAME = 253
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _LABEL_PREFIX.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.match(name))


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


class _Emitter(yaml.emitter.Emitter):
    """PyYAML's emitter, except that tab-indented text (Rego) may still be a literal block."""

    def analyze_scalar(self, scalar: str) -> yaml.emitter.ScalarAnalysis:
        if "\t" not in scalar or not _literal_block(scalar):
            return super().analyze_scalar(scalar)
        analysis = super().analyze_scalar(scalar.replace("\t", " "))
        analysis.scalar = scalar
        return analysis


class _Dumper(_Emitter, yaml.serializer.Serializer, yaml.representer.SafeRepresenter, yaml.resolver.Resolver):
    def __init__(self, stream: Any, **options: Any) -> None:
        _Emitter.__init__(self, stream, width=options.get("width"), allow_unicode=True)
        yaml.serializer.Serializer.__init__(self)
        yaml.representer.SafeRepresenter.__init__(self, default_flow_style=False, sort_keys=True)
        yaml.resolver.Resolver.__init__(self)

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _literal_block(text: str) -> bool:
    """Source code that reads back exactly from a `|` block: no odd whitespace or control characters."""
    lines = text.split("\n")[:-1]
    return (
        len(lines) > 1
        and text.endswith("\n")
        and not text.endswith("\n\n")
        and not text[0].isspace()
        and all(line == line.rstrip() and line.replace("\t", " ").isprintable() for line in lines)
    )


#: Strings that may stay unquoted. PyYAML quotes what *it* would read as another type, but kubectl
#: and gator read YAML with go-yaml, which also takes `y`/`n` for booleans and `0o17`/`1e3` for
#: numbers; so anything not plainly a word (or a word go-yaml reads as bool or null) is quoted.
_PLAIN = re.compile(r"^[A-Za-z_][-A-Za-z0-9_.:/@]*$")
_YAML_WORDS = frozenset({"y", "yes", "n", "no", "true", "false", "on", "off", "null"})


def _represent_str(dumper: _Dumper, text: str) -> yaml.ScalarNode:
    if _literal_block(text):
        style: str | None = "|"
    elif not _PLAIN.match(text) or text.lower() in _YAML_WORDS:
        style = "'"
    else:
        style = None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def kubectl_yaml(value: Mapping[str, Any]) -> bytes:
    """Stable YAML: sorted keys, block style, no aliases, Rego as literal blocks; JSON-exact on reload."""
    text = yaml.dump(value, Dumper=_Dumper, width=1_000_000)
    if yaml.load(text, Loader=_Loader) != value:  # pragma: no cover - the emitter refused a literal block
        text = yaml.safe_dump(value, sort_keys=True, width=1_000_000)
    return text.encode()
