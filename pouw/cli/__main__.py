"""`python -m pouw.cli ...` runs the `pouw` command (used by the devnet to start processes)."""

from pouw.cli import main

if __name__ == "__main__":  # verification workers are spawned: they import this module as __mp_main__
    main()
