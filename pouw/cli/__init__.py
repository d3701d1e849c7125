"""The one `pouw` command; each group lives in its own module beside this one."""

from __future__ import annotations

import importlib

import click

from pouw import __version__

# group name -> module under pouw.cli that defines a click object of the same name
_GROUPS = ("chain", "wallet", "task", "node", "miner", "devnet")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pouw")
def main() -> None:
    """pouw: a Proof-of-Useful-Work chain where miners train segmentation models."""


def _register() -> None:
    for name in _GROUPS:
        try:
            module = importlib.import_module(f"pouw.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pouw.cli.{name}":
                continue
            raise
        main.add_command(getattr(module, name))


_register()
