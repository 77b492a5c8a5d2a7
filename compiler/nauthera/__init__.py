"""Nauthera: compile AuthPolicy resources into OPA bundles that govern OIDC clients."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nauthera")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
