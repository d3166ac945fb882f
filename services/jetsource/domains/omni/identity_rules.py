"""Who holds a handle, as every reader of the omni stream decides it (the identity
service's bucket, the ``omni_identities`` read model, a rebuild): pure functions of
one stored event, shared so that they cannot drift apart.

- An assignment of a handle (a link to its own identity, or the record of a merge
  kept by the identity that received the merged one's handles) has an **order**: its
  stream sequence, except a first contact's automatic link, whose order is 0. The
  assignment of the highest order holds the handle. So an explicit link (an admin's
  link or a merge) always outranks the automatic first contact, whichever of the two
  landed later in the stream; a first contact holds a handle only while nothing
  explicit ever assigned it. A handle has one first contact at most (its identity and
  event ids are derived from the handle), so no two orders are equal.
"""

from __future__ import annotations

from jetsource._gen.omni.v1.lifecycle_pb2 import ExternalIdLinked, IdentitiesMerged
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.omni.events import first_contact_identity

# ``linked_by`` of the link a first contact writes (refused as an admin's --actor).
FIRST_CONTACT = "first_contact"


def is_first_contact(record: RecordedEvent) -> bool:
    """The automatic link a resolve of a never-seen handle wrote."""
    e = record.event
    return (
        isinstance(e, ExternalIdLinked)
        and e.linked_by == FIRST_CONTACT
        and record.aggregate_id == first_contact_identity(e.provider, e.external_id)
    )


def assignment_order(record: RecordedEvent) -> int:
    """The order of the handles ``record`` assigns: 0 for a first contact, else its
    stream sequence."""
    return 0 if is_first_contact(record) else record.stream_seq


def assignments(record: RecordedEvent) -> list[tuple[str, str, str]]:
    """The handles (provider, external id, identity) an identity's event assigns: a
    link to its own identity; a merge's record kept by the identity receiving the
    handles (the survivor, or the end of the survivor's chain of merges when the
    survivor was merged meanwhile); the merged identity's own record assigns nothing."""
    e, me = record.event, record.aggregate_id
    if isinstance(e, ExternalIdLinked) and e.identity_id == me:
        return [(e.provider, e.external_id, me)]
    if isinstance(e, IdentitiesMerged) and e.merged_id != me:
        out = []
        for h in e.handles:
            provider, _, external_id = h.partition(":")
            out.append((provider, external_id, me))
        return out
    return []
