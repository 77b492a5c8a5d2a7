"""Allow `python -m nauthera`."""

from nauthera.cli import main

main()
