"""Local infrastructure on embedded servers from Python wheels (no Docker needed)."""
