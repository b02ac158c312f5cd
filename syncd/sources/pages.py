"""Page fingerprints, as a source hands them to the store (syncd.store.pages): the types both share."""

from __future__ import annotations

from dataclasses import dataclass

from syncd.model import Record

# The OneRoster collections, in the order a page's tag encodes them.
COLLECTIONS = ("courses", "classes", "users", "enrollments")


@dataclass(frozen=True)
class KnownPage:
    """What the last run read at one page position (syncd.store.pages): the digest of its raw
    bytes (and of what else decides its mapping), its item count and its id fingerprint."""

    digest: str
    count: int
    ids: str


class PageRecords(list[Record]):
    """One page's mapped records, with what the store needs to keep its fingerprint. ``skipped``:
    the page's bytes were those of the page last read at the same position, so it was neither
    decoded nor mapped; its records are the ones staged from that page (the list is empty)."""

    def __init__(self, records: list[Record], page: int, digest: str, count: int, ids: str,
                 skipped: bool = False):
        super().__init__(records)
        self.page = page  # the position's tag: offset * len(COLLECTIONS) + the collection's index
        self.digest = digest
        self.size = count  # the items the server sent (list.count is taken)
        self.ids = ids
        self.skipped = skipped


def page_tag(collection: str, offset: int) -> int:
    """A page position as one integer, the same whatever order the pages arrive in."""
    return offset * len(COLLECTIONS) + COLLECTIONS.index(collection)
