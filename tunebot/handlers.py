"""Imports every handler module so each registers its subcommands."""

from tunebot import (
    handlers_core,  # noqa: F401
    handlers_dataset,  # noqa: F401
    handlers_finetune,  # noqa: F401
    handlers_jobs,  # noqa: F401
    handlers_prompt,  # noqa: F401
)
