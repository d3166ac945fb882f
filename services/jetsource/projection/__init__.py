"""The generic projection runtime: read-model contracts, workers, dead letters,
control, admin, and the domain descriptor every domain plugs in with. Nothing here
imports a domain (an import contract in `make lint` keeps it so)."""
