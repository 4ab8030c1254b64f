"""Errors a user should read: each carries its message, an optional hint and the exit code.

Library code raises these; only the CLI turns them into one stderr line and an exit status.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class SlothctlError(Exception):
    """Base class: `message` is the one line a user sees, `hint` what to do about it."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f" (hint: {self.hint})"
        return " ".join(text.split())


class UsageError(SlothctlError):
    """Bad input: a config value, a path, a data file, a missing extra. Exit 2."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A problem in the project TOML or a --set override, located by file and key."""

    def __init__(self, where: str, key: str | None, problem: str, hint: str | None = None):
        self.where = where
        self.key = key
        self.problem = problem
        located = f"{where}: {key}: {problem}" if key else f"{where}: {problem}"
        super().__init__(located, hint)


class DataError(UsageError):
    """The data cannot be read or does not have the expected shape."""


class RuntimeFailure(SlothctlError):
    """Something went wrong while running (a library error, out of memory). Exit 1."""

    exit_code = EXIT_RUNTIME


class Interrupted(SlothctlError):
    """The user stopped the command (Ctrl-C, SIGTERM). Exit 130."""

    exit_code = EXIT_INTERRUPTED
