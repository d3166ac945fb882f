"""The terminal UI (`jetsource tui`, Textual): sessions (list, live follow, replay),
the ledger's process tree, and contexts with a history scrubber."""
