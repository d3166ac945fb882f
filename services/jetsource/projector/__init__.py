"""The projector: durable consumers that keep read models (Valkey, graph) up to date."""
