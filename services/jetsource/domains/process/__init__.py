"""The process ledger: a write-only observer for canonical events of nested processes
(agent runs, tool calls, pipeline stages), read only from its projections."""
