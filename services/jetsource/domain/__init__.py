"""Domains. Each plugs into the engine with an event registry, state, decide and evolve."""
