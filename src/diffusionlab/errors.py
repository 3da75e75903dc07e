"""The one exception type for user mistakes.

Anything a user can get wrong (an unknown name, a missing file, an array of the wrong shape, a corrupt
checkpoint, NaN in data) raises :class:`UserError` with a one-line message that says what to do. The CLI
prints that line and exits non-zero, without a traceback; the Python API lets it propagate.
"""


class UserError(Exception):
    """A mistake in the input: the message is one line, meant for a person, and says how to fix it."""
