"""Imports every handler module so each registers its subcommands."""

from tunebot import handlers_core  # noqa: F401
