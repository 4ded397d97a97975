"""Errors a user can cause while describing or building a model."""


class SpecError(ValueError):
    """A malformed or impossible architecture description.

    The message is one line that names the cause (the stage and key where there is one)
    and is shown to the user as is, never as a traceback.
    """
