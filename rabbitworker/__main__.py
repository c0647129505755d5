"""`python -m rabbitworker`: the command line."""

from .cli import main

main()
