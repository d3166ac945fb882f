"""Settings of sessions (``JETSOURCE_SESSIONS__...``), shared by the emitter, the CLI,
the TUI and the pruner."""

from __future__ import annotations

from pydantic import BaseModel, Field

from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.catalog import Validation

# How long a session with no ending must have been quiet before a prune takes it (a day).
PRUNE_UNENDED_AFTER_S = 86_400.0


class SessionsSettings(BaseModel):
    # The ledger stream that carries sessions (the process domain's).
    stream: str = "PROCESS_EVENTS"
    subject_prefix: str = "process.events"
    # Where sessions are read from: "stream" (the ledger's stream itself: nothing but
    # NATS needed, the fastest follow) or "query" (the read models, through
    # ProcessQueryService at ``process_query``).
    reader: str = Field(default="stream", pattern="^(stream|query)$")
    process_query: str = "127.0.0.1:50055"
    # Events checked against the catalog when emitted or imported: off, warn (log and
    # keep) or strict (refuse a known type whose data breaks its schema).
    validation: Validation = Validation.WARN
    # An emitter that has been quiet this long sends a session_heartbeat.
    heartbeat_s: float = Field(default=10.0, gt=0)
    # A session with no session_ended and no event (heartbeats included) for this long
    # is shown as interrupted: its emitter is gone.
    interrupted_after_s: float = Field(default=60.0, gt=0)
    # The periodic pruner (``jetsource sessions prune --every``, the Helm CronJob):
    # ended sessions older than this go (0: no age limit) ...
    prune_older_than_s: float = Field(default=30 * 86_400.0, ge=0)
    # ... and beyond the newest ``prune_keep`` ended ones (0: no count limit). Ended:
    # completed, failed or interrupted by the session's ending, and ...
    prune_keep: int = Field(default=1000, ge=0)
    # ... a session with no ending once nothing (no event, no heartbeat) has been
    # recorded for it for this long (its end: its last event recorded). Well above
    # any emitter's heartbeat interval, so that a live session is never pruned.
    prune_unended_after_s: float = Field(default=PRUNE_UNENDED_AFTER_S, gt=0)
    # How often the long-running pruner runs (0: it does not).
    prune_every_s: float = Field(default=0.0, ge=0)
    # The observer's claims bucket: the claims of pruned processes' events go too.
    claims_bucket: str = "PROCESS_IDEMPOTENCY"
    # How long a purge may take; a NATS user without purge rights gets no answer at
    # all (the server drops the request), so this is also how long a refusal takes.
    purge_timeout_s: float = Field(default=10.0, gt=0)


class SessionsAppSettings(JetsourceSettings):
    """What the sessions CLI, the TUI and the pruner read: the shared settings and
    ``sessions``."""

    sessions: SessionsSettings = SessionsSettings()
