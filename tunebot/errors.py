"""Exceptions that carry a message meant for the user."""


class UserError(Exception):
    """Bad input: the message is shown to the user as is (with a usage line when known)."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class NotFound(UserError):
    """A named thing (prompt, dataset, job, model) does not exist in this workspace."""


class Forbidden(UserError):
    """The user may not do this."""


class JobError(Exception):
    """A job cannot go on; the message is the reason the user reads in the thread."""


class Cancelled(Exception):
    """The job was cancelled by a user; raised at the runner's next check."""


class LeaseLost(Exception):
    """Another worker owns the job now; this run must stop without touching the row."""
