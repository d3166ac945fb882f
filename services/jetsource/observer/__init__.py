"""The process ledger's observer: a write-only gRPC service (``jetsource-observer``)."""
