"""`python -m stepstone.cli`: the command line."""

from stepstone.cli import main

main()
