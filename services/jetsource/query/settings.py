"""The query service's settings (``JETSOURCE_QUERY__...``); defined beside the context
domain's query handler, which reads them."""

from jetsource.domains.context.query_settings import QueryOptions, QuerySettings

__all__ = ["QueryOptions", "QuerySettings"]
