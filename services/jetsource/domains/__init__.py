"""The one place domains are registered. The engine loads ``REGISTRY`` from here by
name (``JETSOURCE_PROJECTOR__DOMAINS``); each domain is a package beside this file."""

from jetsource.domains.context.descriptor import DOMAIN as CONTEXT
from jetsource.domains.omni.descriptor import DOMAIN as OMNI
from jetsource.domains.process.descriptor import DOMAIN as PROCESS
from jetsource.projection.domain import DomainRegistry

REGISTRY = DomainRegistry([CONTEXT, PROCESS, OMNI])

__all__ = ["REGISTRY"]
