"""`python -m streammachine` is the CLI."""

from .cli import main

main()
