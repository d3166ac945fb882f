"""``python -m jetsource``: the ``jetsource`` command (:func:`jetsource.cli.main`).

Ctrl-C or SIGTERM from this module's first line is said as in any command: one
``cancelled`` line (JSON with ``-o json``), exit 130. Until ``main`` put its own handling
in place (its first lines) it was a traceback of whichever import it broke, or for
SIGTERM the default action (killed, in silence). Only what the interpreter loaded
already is imported before the ``try``."""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from signal import SIGTERM
    from signal import signal as set_handler
else:  # signal's C half, loaded with the interpreter (signal itself: 10 ms of enum)
    from _signal import SIGTERM
    from _signal import signal as set_handler

_stopped_by: list[str] = []


def _sigterm(signum: int, frame: object) -> None:
    """SIGTERM before :func:`jetsource.cli.main` takes it: as Ctrl-C, named."""
    _stopped_by.append("SIGTERM")
    raise KeyboardInterrupt


set_handler(SIGTERM, _sigterm)
try:
    from jetsource.cli import main, stopped_before_run

    if _stopped_by:  # its KeyboardInterrupt was lost on the way (only reported)
        stopped_before_run(sys.argv[1:], "SIGTERM")
    main()
except KeyboardInterrupt:  # before main's own handling (it loads no more than this)
    from jetsource.cli import stopped_before_run

    stopped_before_run(sys.argv[1:], *_stopped_by[-1:])
