"""`python -m stepstone`: the command line."""

from stepstone.cli import main

main()
