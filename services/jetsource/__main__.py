"""``python -m jetsource``: the ``jetsource`` command (:func:`jetsource.cli.main`).

Ctrl-C or SIGTERM from this module's first line is said as in any command: one
``cancelled`` line (JSON with ``-o json``), exit 130. Until ``main`` put its own handling
in place (its first lines) it was a traceback of whichever import it broke, or for
SIGTERM the default action (killed, in silence). Only what the interpreter loaded
already is imported before the ``try``.

While ``jetsource.cli`` is imported, Ctrl-C is only noted (and said once it is loaded),
and a KeyboardInterrupt Python could only report ("Exception ignored in ...", SIGTERM's
raised in the import system's weakref callback) is not said: either was lost, the
command going on to its connect timeout, or a traceback of this module before the
line."""

import sys

_stopped_by: list[str] = []
try:  # from here on: a KeyboardInterrupt before our handlers are in place is said too
    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from signal import SIGINT, SIGTERM, default_int_handler, getsignal
        from signal import signal as set_handler
    else:  # signal's C half, loaded with the interpreter (signal itself: 10 ms of enum)
        from _signal import SIGINT, SIGTERM, default_int_handler, getsignal
        from _signal import signal as set_handler

    def _sigterm(signum: int, frame: object) -> None:
        """SIGTERM before :func:`jetsource.cli.main` takes it: as Ctrl-C, named."""
        _stopped_by.append("SIGTERM")
        raise KeyboardInterrupt

    def _sigint(signum: int, frame: object) -> None:
        """Ctrl-C while ``jetsource.cli`` is imported: noted, said once it is loaded (a
        KeyboardInterrupt raised there may be one Python can only report, and lose)."""
        _stopped_by.append("Ctrl-C")

    def _lost_interrupt_unsaid(unraisable: object) -> None:
        """A KeyboardInterrupt Python could only report is not said: its signal was noted."""
        if not isinstance(getattr(unraisable, "exc_value", None), KeyboardInterrupt):
            sys.__unraisablehook__(unraisable)  # type: ignore[arg-type]

    set_handler(SIGTERM, _sigterm)
    hook = sys.unraisablehook
    sys.unraisablehook = _lost_interrupt_unsaid
    # not where SIGINT is ignored (a job started with & from a script)
    noting = getsignal(SIGINT) is default_int_handler
    try:
        if noting:
            set_handler(SIGINT, _sigint)
        from jetsource.cli import main, stopped_before_run
    finally:
        if noting and getsignal(SIGINT) is _sigint:
            set_handler(SIGINT, default_int_handler)
        sys.unraisablehook = hook

    if _stopped_by:  # noted, or its KeyboardInterrupt was lost on the way
        stopped_before_run(sys.argv[1:], _stopped_by[-1])
    main()
except KeyboardInterrupt:  # before main's own handling (it loads no more than this)
    from jetsource.cli import stopped_before_run

    stopped_before_run(sys.argv[1:], *_stopped_by[-1:])
