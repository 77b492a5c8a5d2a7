"""Nauthera\x27s benchmark suite: `make bench` (see bench/README.md)."""
