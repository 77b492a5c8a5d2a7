"""Importers: clients that already exist elsewhere (Keycloak realms, RFC 7591 metadata) as AuthClients.

A layer beside `targets`, above `compile`: it reads foreign descriptions, maps them by tables and emits
AuthClient documents; findings are `Diagnostic`s, and only `cli` prints them and picks exit codes.
"""
