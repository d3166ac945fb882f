"""The process ledger's read-only query service (``jetsource-process-query``)."""
