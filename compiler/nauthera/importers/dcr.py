"""`nauthera import dcr`: RFC 7591 / OpenID Connect registration metadata to AuthClients (SPEC §9).

`metadata_spec` is the mapping; its rows (`compile.mapping`) are the ones the bundle's registration
decision renders, and the tests feed the same requests to both and compare the AuthClients they make.
A file holds one metadata object (a registration request or response) or a JSON list of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nauthera.compile.diagnostics import Diagnostic, Level
from nauthera.compile.mapping import (
    APPLICATION_TYPE_MEMBER,
    COPIED_MEMBERS,
    DEFAULT_NAMESPACE,
    PKCE_MEMBERS,
    SCOPE_MEMBER,
    metadata_spec,
)
from nauthera.importers.clients import ImportedClient, ImportResult, recognised
from nauthera.importers.jsoninput import JsonInput
from nauthera.importers.naming import namespace_for

#: Members of RFC 7591/7592, OpenID Connect Registration, Session and Logout, RFC 8705, JAR, JARM and
#: CIBA that no AuthClient field describes (yet): read silently. Any other
#: member is reported, and ignored as RFC 7591 section 2 asks.
IGNORED_MEMBERS = frozenset(
    {
        "authorization_encrypted_response_alg",
        "authorization_encrypted_response_enc",
        "authorization_signed_response_alg",
        "backchannel_authentication_request_signing_alg",
        "backchannel_client_notification_endpoint",
        "backchannel_logout_session_required",
        "backchannel_logout_uri",
        "backchannel_token_delivery_mode",
        "backchannel_user_code_parameter",
        "client_id",
        "client_id_issued_at",
        "client_secret",
        "client_secret_expires_at",
        "client_uri",
        "contacts",
        "default_acr_values",
        "default_max_age",
        "frontchannel_logout_session_required",
        "frontchannel_logout_uri",
        "id_token_encrypted_response_alg",
        "id_token_encrypted_response_enc",
        "initiate_login_uri",
        "jwks",
        "jwks_uri",
        "logo_uri",
        "policy_uri",
        "post_logout_redirect_uris",
        "registration_access_token",
        "registration_client_uri",
        "request_object_encryption_alg",
        "request_object_encryption_enc",
        "request_object_signing_alg",
        "request_uris",
        "require_auth_time",
        "require_signed_request_object",
        "sector_identifier_uri",
        "software_id",
        "software_statement",
        "software_version",
        "subject_type",
        "tls_client_auth_san_dns",
        "tls_client_auth_san_email",
        "tls_client_auth_san_ip",
        "tls_client_auth_san_uri",
        "tls_client_auth_subject_dn",
        "tos_uri",
        "userinfo_encrypted_response_alg",
        "userinfo_encrypted_response_enc",
        "userinfo_signed_response_alg",
    }
)
MAPPED_MEMBERS = frozenset({*COPIED_MEMBERS, *PKCE_MEMBERS, SCOPE_MEMBER, APPLICATION_TYPE_MEMBER})
KNOWN_MEMBERS = MAPPED_MEMBERS | IGNORED_MEMBERS


def _base(member: str) -> str:
    """`client_name#ja-Jpan-JP` is `client_name` in another language (RFC 7591 section 2.2)."""
    return member.partition("#")[0]


def _text(metadata: dict[str, Any], member: str) -> str | None:
    value = metadata.get(member)
    return value if isinstance(value, str) and value else None


def names_of(metadata: dict[str, Any]) -> tuple[str | None, str | None]:
    """What the name is made from (client_name, else client_id) and the source id to annotate
    (client_id, else client_name); the registration decision chooses the same way."""
    name_source = _text(metadata, "client_name") or _text(metadata, "client_id")
    return name_source, _text(metadata, "client_id") or _text(metadata, "client_name")


@dataclass(frozen=True)
class DcrOptions:
    namespace: str | None
    labels: dict[str, str]


def _entries(doc: JsonInput) -> list[tuple[tuple[int, ...], Any]] | None:
    """The metadata objects of a file and their paths; None when the JSON is not client metadata."""
    value = doc.value
    if isinstance(value, dict):
        found: list[tuple[tuple[int, ...], Any]] = [((), value)]
    elif isinstance(value, list):
        found = [((index,), entry) for index, entry in enumerate(value)]
    else:
        return None
    recognised = all(
        isinstance(entry, dict) and any(_base(member) in KNOWN_MEMBERS for member in entry)
        for _, entry in found
    )
    return found if found and recognised else None


def _shape_problem(value: Any) -> str:
    hint = (
        "expected RFC 7591 client metadata: a JSON object with members such as redirect_uris, "
        "grant_types and client_name (a registration request or response), or a JSON list of them"
    )
    if isinstance(value, dict) and "realm" in value:
        return f"this looks like a Keycloak realm export; use `nauthera import keycloak` ({hint})"
    return f"not client metadata: {hint}"


def import_dcr(docs: Sequence[JsonInput], options: DcrOptions, result: ImportResult) -> None:
    """Add the client of every metadata object in `docs` to `result`."""
    namespace = namespace_for(options.namespace or DEFAULT_NAMESPACE)
    for doc, entries in recognised(docs, result, _entries, _shape_problem):
        for path, metadata in entries:
            position = doc.value_position(path)
            name_source, source_id = names_of(metadata)
            if name_source is None:
                name_source = f"{doc.stem}-{path[0] + 1}" if path else doc.stem
                result.diagnostics.append(
                    Diagnostic(
                        Level.NOTE,
                        position,
                        "unnamed",
                        f"client metadata has neither client_name nor client_id; named after its file "
                        f"({name_source!r})",
                    )
                )
            for member in sorted(metadata):
                if _base(member) not in KNOWN_MEMBERS:
                    result.diagnostics.append(
                        Diagnostic(
                            Level.NOTE,
                            doc.key_position((*path, member)),
                            "unknown-member",
                            f"member {member!r} is not RFC 7591 or OpenID Connect client metadata; ignored",
                        )
                    )
            identity = source_id or str(position)
            result.clients.append(
                ImportedClient(
                    namespace,
                    name_source,
                    identity,
                    source_id,
                    options.labels,
                    metadata_spec(metadata),
                    position,
                )
            )
