"""User-facing errors: one clear line, a distinct exit code, no traceback."""


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (for one-line errors)."""
    return (str(exc).strip().splitlines() or [""])[0]


class UserError(Exception):
    """Bad input from the user (config, files, environment).

    The entry point prints ``error: <message>`` and exits with ``exit_code``
    instead of a traceback (set ``debug=true`` to see one).
    """

    exit_code = 2


class ConfigError(UserError):
    """An override or config value is invalid."""

    exit_code = 2


class DataError(UserError):
    """Data files or the Hub dataset cannot be read as the task expects."""

    exit_code = 3


class ModelError(UserError):
    """The model cannot be found or is not supported by the requested method."""

    exit_code = 4


class RecordError(UserError):
    """A run's record or checkpoint (``results.json``, ``checkpoint/``) is damaged or unreadable."""

    exit_code = 8


class OutputError(UserError):
    """The run dir cannot be written (a read-only or forbidden place, a file where a folder should be)."""

    exit_code = 7
