"""User-facing errors.

Anything a user can cause (a bad file, a misspelt config key, a missing model) raises a
:class:`PreftuneError`; the CLI prints its message and exits with status 2, no traceback.
"""

from __future__ import annotations


class PreftuneError(Exception):
    """An error caused by the user's input, with a message meant to be read by them."""


class ConfigError(PreftuneError):
    """A configuration key or value is wrong."""


class DataError(PreftuneError):
    """A data row is wrong. The message names the file, the 1-based row number and the field."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None):
        self.file, self.row, self.field, self.reason = file, row, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
