"""Sessions: observability of command-line runs on the process ledger.

A session is one run of a command, recorded as a root process of kind ``session``;
its components' events are that process's events, and their own work can nest under
it as child processes. This package holds the event catalog, the user-facing event
format and its mapping onto the ledger, the progress fold the TUI and replay share,
the session record, follow and pruning.
"""
