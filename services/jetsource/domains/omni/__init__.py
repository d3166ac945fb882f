"""The omni domain: messaging ingest (issue #17)."""
