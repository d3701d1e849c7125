"""`python -m pouw.cli ...` runs the `pouw` command (used by the devnet to start processes)."""

from pouw.cli import main

main()
