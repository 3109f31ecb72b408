"""User-facing errors.

Everything a user can cause (a typo, a missing file, a bad value) raises a :class:`UserError`;
the CLI prints its message on one line and exits with status 2. Anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import os
import stat


def not_a_file_reason(path: "os.PathLike[str] | str") -> "str | None":
    """Why ``path`` cannot be read as a regular file ("does not exist", "is a directory", …), or
    None when it is one; error messages say what the path actually is rather than "missing"."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"is {kind}, not a file"


class UserError(Exception):
    """An error caused by the user's input; its message is the whole explanation."""


class ConfigError(UserError, ValueError):
    """An invalid option value or combination of options."""


class UnknownNameError(UserError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset that is not where the user said it is."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the requested model."""


class DependencyError(UserError, ImportError):
    """An optional dependency that is needed for the requested feature is missing."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the current batch was finished and its state saved.

    Not a :class:`UserError`: the CLI prints how to resume and exits 128 + the signal number
    (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, signum: int, where: str) -> None:
        super().__init__(f"interrupted by signal {signum} during {where}")
        self.signum = signum
        self.where = where
        # The folder that holds the saved state, filled in by whoever knows it (``pipeline.run``).
        self.state_dir: "str | None" = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
