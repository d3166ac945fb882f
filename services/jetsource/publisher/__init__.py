"""The publisher service: gRPC commands -> decide -> append."""
