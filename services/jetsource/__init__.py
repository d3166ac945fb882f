"""jetsource: an event-sourced Context Service on NATS JetStream."""

__version__ = "0.1.0"
