"""Instrument code with the process ledger (see :mod:`jetsource.sdk.observe`)."""

from jetsource.sdk.observe import Observer, Process, Stats

__all__ = ["Observer", "Process", "Stats"]
