"""The JetStream event store and its in-memory twin."""
