"""The one place domains are registered. The engine loads ``REGISTRY`` from here by
name (``JETSOURCE_PROJECTOR__DOMAINS``); each domain is a package beside this file.

The registry is built on first use, not when the package is imported: any
``jetsource.domains.<x>`` import runs this file, and the three descriptors bring the
graph driver, Valkey and the projection runtime (~0.5 s), which a command reading one
domain's settings or records has no use for."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jetsource.projection.domain import DomainRegistry

    REGISTRY: DomainRegistry

__all__ = ["REGISTRY", "registry"]


@functools.cache
def registry() -> DomainRegistry:
    """Every registered domain (built once, on the first call)."""
    from jetsource.domains.context.descriptor import DOMAIN as CONTEXT
    from jetsource.domains.omni.descriptor import configured_domain
    from jetsource.domains.process.descriptor import DOMAIN as PROCESS
    from jetsource.projection.domain import DomainRegistry

    # omni's stream and subjects follow JETSOURCE_OMNI__* as the ingress's do.
    return DomainRegistry([CONTEXT, PROCESS, configured_domain()])


def __getattr__(name: str) -> Any:
    # ``from jetsource.domains import REGISTRY`` and the engine's getattr by name.
    if name == "REGISTRY":
        return registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
