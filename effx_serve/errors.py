"""Errors a user can cause; the CLI prints their message as one line, never a traceback."""

from training.errors import SpecError


class UserError(Exception):
    """Bad input, a missing file or dependency, an unsupported choice: the message says the cause and the fix."""


USER_ERRORS = (UserError, SpecError)
