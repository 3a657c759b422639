"""The ``evit`` command line: one Typer app, commands registered by area.

Each area module exposes ``register(app)``; imports of heavy libraries (torch, rosbags)
happen inside the commands so ``evit --help`` stays fast.
"""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="evit: compress vision transformers into fast UAV detectors.")

_AREAS = (
    "evit_training.cli_data",       # evit synth
    "evit_training.cli_train",      # evit train / distill / export
    "evit_training.cli_compress",   # evit prune / quantize / build-engine / compress / report
    "evit_training.cli_bags",       # evit make-bag / eval-bag / demo
)

for _name in _AREAS:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
