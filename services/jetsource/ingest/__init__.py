"""jetsource-ingest: the omni domain's HTTP ingress (webhooks) and its query service."""
