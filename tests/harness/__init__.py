"""Shared infrastructure for tests, benchmarks and demos: real processes (OPA, servers) on loopback."""
