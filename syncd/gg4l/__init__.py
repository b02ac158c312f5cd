"""GG4L School Passport auto-provisioning (SPEC §9; facts in shared/reference/gg4l.md).

- ``partner``: the Partner API client (token with Basic, the credentials list parsed leniently).
- ``lifecycle``: a district's states as pure functions of (previous record, listing, now).
- ``webhook``: the ``POST /webhooks/gg4l`` logic, independent of any HTTP server.
- ``discovery``: one discovery pass: list, reconcile, store, log, keep the secrets in memory.

This module holds what they share: district naming and GUID validation.
"""

from __future__ import annotations

import re

TENANT_PREFIX = "gg4l-"
# A tenant name is at most 63 characters (config.TENANT_NAME): 5 for the prefix, 58 for the GUID.
GUID_CHARS = 58
MAX_GUID_LENGTH = 64
# GG4L's GUIDs are UUIDs in every example, but the format is not documented: accept anything
# GUID-like (letters, digits, '-', '_', optional braces) and bounded, refuse everything else.
GUID = re.compile(r"^\{?[A-Za-z0-9][A-Za-z0-9_-]{0,62}\}?$")
MODES = ("test", "trial", "standard")
# A later webhook may raise a district's mode, never lower it (a "test" replay must not demote it).
MODE_RANK = {"test": 0, "trial": 1, "standard": 2}


def valid_guid(value: object) -> bool:
    """True when ``value`` is a GUID-like string of at most 64 characters."""
    return (isinstance(value, str) and len(value) <= MAX_GUID_LENGTH and bool(GUID.match(value))
            and bool(tenant_suffix(value)))


def tenant_suffix(guid: str) -> str:
    return re.sub(r"[^a-z0-9]", "", guid.lower())[:GUID_CHARS]


def tenant_name(guid: str) -> str:
    """``gg4l-`` + the GUID lowercased, every character outside [a-z0-9] removed, cut to 58."""
    suffix = tenant_suffix(guid)
    if not suffix:
        raise ValueError("a district GUID needs at least one letter or digit")
    return TENANT_PREFIX + suffix


def higher_mode(current: str | None, new: str) -> str:
    if current is None or MODE_RANK.get(new, -1) > MODE_RANK.get(current, -1):
        return new
    return current
