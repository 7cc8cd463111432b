"""The project's boundary errors: bad input that the user can fix.

Every error a user can cause -- a bad config value or flag, missing data, a file that
is not a checkpoint or ticket, an output that already exists, a workdir that belongs to
another run, a loss that diverged -- derives from `UserError`. The trainer binaries
print exactly these as one line (exit status 2); any other exception is a bug in
dwlt_tf or below it and keeps its traceback (exit status 1).

Each concept module defines its own subclasses next to the code that raises them
(`data.DatasetNotFoundError`, `convert.CheckpointError`, ...); this module holds only
the base classes they share.
"""


class UserError(Exception):
    """Bad input at the boundary (config, flags, files); the message names it."""


class ConfigError(UserError, ValueError):
    """A config key, flag or value that cannot be used; the message names it."""


class OutputExistsError(UserError, FileExistsError):
    """An output that is never overwritten (an export version, converted weights) exists."""
