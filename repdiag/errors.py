"""The one exception type for user mistakes.

Anything a user can get wrong (a path, a dataset name, a shape, a NaN in a
feature file, an unknown option) raises :class:`UserError` with a one-line
message. The CLI prints ``repdiag: <message>`` and exits with code 2; it never
shows a traceback for these.
"""


class UserError(Exception):
    """A mistake in the user's input, reported as one line and exit code 2."""

    exit_code = 2


def reason(err: BaseException, *, typed: bool = False, limit: int | None = None) -> str:
    """Why ``err`` happened, on one line, for the "why" half of a "what: why" message.

    An OSError gives its ``strerror`` ("No space left on device", without the
    errno and file name the "what" already names); any other exception the first
    line of its message. ``typed`` (for exceptions nobody anticipated: a failed
    download, a corrupt archive) gives the type name and the whole message, with
    the type named once even when the message starts with it. Runs of whitespace
    become one space; ``limit`` cuts the text between words; an empty message
    gives the type name.
    """
    name = type(err).__name__
    if typed:
        text = " ".join(str(err).split())
    elif isinstance(err, OSError) and err.strerror:
        text = " ".join(err.strerror.split())
    else:
        text = " ".join(next((ln for ln in str(err).splitlines() if ln.strip()), "").split())
    if limit is not None and len(text) > limit:  # cut between words, never inside one
        text = text[: limit - 4].rsplit(" ", 1)[0] + " ..."
    if not text:
        return name
    return f"{name}: {text}" if typed and not text.startswith(name) else text


def user_error(what: str, err: BaseException, **kwargs) -> UserError:
    """The one-line error ``"what: why"`` for ``err`` (``why`` from :func:`reason`, which
    takes ``typed`` and ``limit``); raise it ``from None`` so no traceback shows."""
    return UserError(f"{what}: {reason(err, **kwargs)}")
