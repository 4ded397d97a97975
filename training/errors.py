"""Errors a user can cause while describing or building a model."""

from effx_serve.core.errors import UserError


class SpecError(UserError, ValueError):
    """A malformed or impossible architecture description (or training setting).

    The message is one line that names the cause (the stage and key where there is one)
    and is shown to the user as is, never as a traceback.
    """
