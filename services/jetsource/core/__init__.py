"""Domain-neutral engine pieces: settings, envelope, codec, ids, errors."""
