"""The `diffad fit` subcommand (registered in diffad.cli.COMMAND_MODULES)."""

from diffad.training.fit import register

__all__ = ["register"]
