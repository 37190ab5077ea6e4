"""The one exception type for user mistakes.

Anything a user can get wrong (a path, a dataset name, a shape, a NaN in a
feature file, an unknown option) raises :class:`UserError` with a one-line
message. The CLI prints ``repdiag: <message>`` and exits with code 2; it never
shows a traceback for these.
"""


class UserError(Exception):
    """A mistake in the user's input, reported as one line and exit code 2."""

    exit_code = 2
