"""Named fault points: where a test kills the process for real to check what a kill leaves.

``REPDIAG_FAULT_KILL=NAME`` (or ``NAME#K``: the K-th time the point is reached,
counted from 1) makes the process send itself ``SIGKILL`` at the point called
``NAME``, as a power cut or the out-of-memory killer would: no handler, no
``finally`` and no clean-up runs. Unset (always, outside tests), a point costs one
dictionary look-up.

Points: ``write:FILE:partial`` (an atomic write of ``FILE`` killed with its
temporary file half written), ``write:FILE:written`` (killed right after ``FILE``
was renamed into place), and the output-set points of :mod:`repdiag.outputs`
(``publish:adopt:ENTRY``, ``publish:exchange:FOLDER``, ``publish:swap``,
``publish:swapped``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

_SEEN: dict[str, int] = {}


def fault_point(name: str, before_kill: Callable[[], None] | None = None) -> None:
    """Kill this process with SIGKILL if ``REPDIAG_FAULT_KILL`` names this point (and this
    occurrence); ``before_kill`` runs first (to leave a half-written file, say)."""
    wanted = os.environ.get("REPDIAG_FAULT_KILL")
    if not wanted:
        return
    target, _, k = wanted.partition("#")
    if target != name:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if k and _SEEN[name] != int(k):
        return
    if before_kill is not None:
        before_kill()
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
