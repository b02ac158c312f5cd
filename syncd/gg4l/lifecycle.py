"""A district's life as pure functions: (previous record, listing, now) -> (new record, events).

Nothing here reads a clock, a file or the network, so every rule of SPEC §9 is tested by passing
time in. The record never holds the district's client secret (it stays in memory, see discovery).

States, in the order they are decided for a listed district:
``recorded`` (known, but its mode creates no tenant), ``paused`` (the admin's choice), ``expired``
(``expiryDate`` passed: not synced, nothing removed), ``listing_invalid`` (listed, but the entry
cannot be used), ``awaiting_data`` (no ``lastDataProcessingCompletedTimestamp`` yet),
``pending_mapping`` (no install sid or token, or ``on_new_district = "pending"`` and not mapped),
``expiring`` (expiry within 30 days: still synced), ``active``.
For a district absent from the list: ``missing``, then ``revoked`` after 3 polls in a row AND 3 hours,
then ``purged`` ``purge_after_days`` after revocation. Listed again: restored, with its mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from syncd.gg4l import higher_mode, tenant_name
from syncd.gg4l.partner import Listing, iso

STATES = ("recorded", "awaiting_data", "pending_mapping", "active", "paused", "expiring", "expired",
          "listing_invalid", "missing", "revoked", "purged")
# States in which a district's tenant may run a sync (a dry run under on_new_district = "dry_run").
SYNCING = ("active", "expiring")
# States of a district that is gone from the list.
GONE = ("missing", "revoked", "purged")
POLICIES = ("pending", "dry_run", "sync")


@dataclass(frozen=True)
class Rules:
    """The [gg4l] settings the lifecycle needs, and the thresholds of SPEC §9."""

    modes: tuple[str, ...] = ("standard",)
    on_new_district: str = "pending"
    purge_after_days: int = 30
    template_install_sid: str = ""
    template_token: bool = False
    expiring_within: timedelta = timedelta(days=30)
    revoke_after_polls: int = 3
    revoke_after: timedelta = timedelta(hours=3)


@dataclass(frozen=True)
class District:
    """What the state store keeps of a district. Never its client secret."""

    guid: str
    tenant: str
    state: str
    mode: str = "standard"
    policy: str = "pending"  # pending (wait for `tenants map`) | dry_run | sync
    name: str = ""
    paused: bool = False
    install_sid: str = ""
    token_ref: str = ""  # a secret reference (env:, file:, credential:), never a value
    client_id: str = ""
    api_url: str = ""
    token_url: str = ""
    missing_polls: int = 0
    first_missing_at: datetime | None = None
    revoked_at: datetime | None = None
    purged_at: datetime | None = None
    expiry: datetime | None = None
    last_seen: datetime | None = None
    last_data_ts: datetime | None = None
    synced_data_ts: datetime | None = None
    created_at: datetime | None = None
    problem: str = ""

    @property
    def syncing(self) -> bool:
        return self.state in SYNCING


@dataclass(frozen=True)
class Event:
    """Something worth one log line and one audit row; ``alert`` ones also go to the admin."""

    guid: str
    event: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    alert: bool = False


def step(previous: District | None, listing: Listing | None, now: datetime, rules: Rules,
         mode: str | None = None) -> tuple[District | None, list[Event]]:
    """One district after one successful discovery poll.

    ``listing`` is None when the district is absent from the list. ``mode`` is the highest mode
    any webhook announced for it (None: no webhook; a district the vendor activated is standard).
    """
    if previous is None:
        if listing is None:
            return None, []
        return _new(listing, now, rules, mode)
    if mode is not None:
        previous = replace(previous, mode=higher_mode(previous.mode, mode))
    if listing is None:
        return _absent(previous, now, rules)
    return _listed(previous, listing, now, rules)


def _new(listing: Listing, now: datetime, rules: Rules, mode: str | None) -> tuple[District, list[Event]]:
    record = District(guid=listing.guid, tenant=tenant_name(listing.guid), state="recorded",
                      mode=mode or "standard", policy=rules.on_new_district, created_at=now)
    record = _apply_listing(record, listing, now)
    record = replace(record, state=decide(record, now, rules))
    # A district that is new and already expiring (or expired) is worth a warning, once.
    return record, [Event(listing.guid, "gg4l.district_new", {"tenant": record.tenant, "state": record.state,
                                                               "mode": record.mode, "name": record.name},
                          alert=record.state in ("expiring", "expired"))]


def _apply_listing(record: District, listing: Listing, now: datetime) -> District:
    return replace(record, name=listing.name or record.name, client_id=listing.client_id or record.client_id,
                   api_url=listing.api_url or record.api_url, token_url=listing.token_url or record.token_url,
                   expiry=listing.expiry, last_data_ts=listing.data_ts or record.last_data_ts, last_seen=now,
                   problem=listing.problem, missing_polls=0, first_missing_at=None, revoked_at=None)


def _listed(previous: District, listing: Listing, now: datetime, rules: Rules) -> tuple[District, list[Event]]:
    events = []
    if previous.state in GONE:
        # Listed again: the mapping, the policy and (in the store) the acknowledged sids all stay.
        events.append(Event(previous.guid, "gg4l.district_restored",
                            {"tenant": previous.tenant, "was": previous.state, "revoked_at": iso(previous.revoked_at)},
                            alert=previous.state != "missing"))
    if previous.client_id and listing.client_id and listing.client_id != previous.client_id:
        events.append(Event(previous.guid, "gg4l.credentials_rotated", {"tenant": previous.tenant}))
    if listing.data_ts and previous.last_data_ts and listing.data_ts > previous.last_data_ts:
        events.append(Event(previous.guid, "gg4l.data_ready", {"tenant": previous.tenant,
                                                               "data_ts": iso(listing.data_ts)}))
    if listing.expiry != previous.expiry and previous.expiry is not None and listing.expiry is not None:
        events.append(Event(previous.guid, "gg4l.expiry_changed", {"tenant": previous.tenant,
                                                                   "from": iso(previous.expiry),
                                                                   "to": iso(listing.expiry)}))
    record = _apply_listing(replace(previous, purged_at=previous.purged_at if previous.state == "purged" else None),
                            listing, now)
    record = replace(record, state=decide(record, now, rules))
    return record, events + _transition(previous, record)


def _absent(previous: District, now: datetime, rules: Rules) -> tuple[District, list[Event]]:
    if previous.state == "purged":
        return previous, []
    if previous.state == "revoked":
        assert previous.revoked_at is not None
        if now - previous.revoked_at >= timedelta(days=rules.purge_after_days):
            record = replace(previous, state="purged", purged_at=now)
            return record, [Event(previous.guid, "gg4l.district_purged",
                                  {"tenant": previous.tenant, "revoked_at": iso(previous.revoked_at)})]
        return previous, []
    first = previous.first_missing_at or now
    polls = previous.missing_polls + 1
    if polls >= rules.revoke_after_polls and now - first >= rules.revoke_after:
        record = replace(previous, state="revoked", missing_polls=polls, first_missing_at=first, revoked_at=now)
        return record, [Event(previous.guid, "gg4l.district_revoked",
                              {"tenant": previous.tenant, "missing_since": iso(first), "polls": polls,
                               "purge_after_days": rules.purge_after_days}, alert=True)]
    record = replace(previous, state="missing", missing_polls=polls, first_missing_at=first)
    events = [] if previous.state == "missing" else [
        Event(previous.guid, "gg4l.district_missing", {"tenant": previous.tenant, "was": previous.state})]
    return record, events


def decide(record: District, now: datetime, rules: Rules) -> str:
    """The state of a listed district."""
    if record.mode not in rules.modes or record.mode == "test":
        return "recorded"
    if record.paused:
        return "paused"
    if record.expiry is not None and record.expiry <= now:
        return "expired"
    if record.problem:
        return "listing_invalid"
    if record.last_data_ts is None:
        return "awaiting_data"
    if not mapped(record, rules):
        return "pending_mapping"
    if record.expiry is not None and record.expiry - now <= rules.expiring_within:
        return "expiring"
    return "active"


def mapped(record: District, rules: Rules) -> bool:
    """Whether the district has a target to sync to, under its policy."""
    if record.policy == "pending":
        return False
    return bool(record.install_sid or rules.template_install_sid) and bool(record.token_ref or rules.template_token)


def _transition(previous: District, record: District) -> list[Event]:
    """One event when the state changes; expiring and expired are also alerts (logged once)."""
    if previous.state == record.state:
        return []
    detail: dict[str, Any] = {"tenant": record.tenant, "from": previous.state, "to": record.state}
    if record.state in ("expiring", "expired"):
        detail["expiry"] = iso(record.expiry)
    alert = record.state in ("expiring", "expired") or previous.state == "expired"
    return [Event(record.guid, f"gg4l.district_{record.state}" if record.state in ("expiring", "expired")
                  else "gg4l.district_state", detail, alert=alert)]


def reconcile(records: Mapping[str, District], listings: Iterable[Listing], now: datetime, rules: Rules,
              modes: Mapping[str, str] | None = None) -> tuple[dict[str, District], list[Event]]:
    """Every district after one successful poll. Keys are GUIDs lowercased.

    ``modes``: the highest webhook mode per lowercased GUID. A GUID whose tenant name collides with
    another district's is refused (recorded as an event), never merged into it.
    """
    modes = modes or {}
    out: dict[str, District] = {}
    events: list[Event] = []
    listed = {listing.guid.lower(): listing for listing in listings}
    tenants = {record.tenant: key for key, record in records.items()}
    for key in sorted(set(records) | set(listed)):
        listing = listed.get(key)
        previous = records.get(key)
        if previous is None and listing is not None:
            owner = tenants.get(tenant_name(listing.guid))
            if owner is not None and owner != key:
                holder = (out.get(owner) or records[owner]).guid
                events.append(Event(listing.guid, "gg4l.district_refused",
                                    {"reason": f"its tenant name is taken by district {holder}"}, alert=True))
                continue
        record, happened = step(previous, listing, now, rules, modes.get(key))
        events.extend(happened)
        if record is not None:
            out[key] = record
            tenants[record.tenant] = key
    return out, events


def data_changed(record: District) -> bool:
    """Whether GG4L finished a data import since the last sync (gate the run on it, gg4l.md §9 step 4)."""
    if record.last_data_ts is None:
        return False
    return record.synced_data_ts is None or record.last_data_ts > record.synced_data_ts


def synced(record: District, data_ts: datetime | None) -> District:
    """The record after a completed sync of the data GG4L had ready at ``data_ts`` (read before the run)."""
    return replace(record, synced_data_ts=data_ts or record.synced_data_ts)


def map_district(record: District, now: datetime, rules: Rules, install_sid: str,
                 token_ref: str = "") -> tuple[District, list[Event]]:
    """``syncd tenants map``: give the district its install (and token), and let it sync."""
    mapped_record = replace(record, install_sid=install_sid, token_ref=token_ref or record.token_ref,
                            policy="sync")
    return _restate(record, mapped_record, now, rules, "gg4l.district_mapped", {"install_sid": install_sid})


def set_paused(record: District, now: datetime, rules: Rules, paused: bool) -> tuple[District, list[Event]]:
    """``syncd tenants pause|resume``."""
    return _restate(record, replace(record, paused=paused), now, rules,
                    "gg4l.district_paused" if paused else "gg4l.district_resumed", {})


def _restate(previous: District, record: District, now: datetime, rules: Rules, name: str,
             detail: dict[str, Any]) -> tuple[District, list[Event]]:
    if record.state not in GONE:
        record = replace(record, state=decide(record, now, rules))
    return record, [Event(record.guid, name, {"tenant": record.tenant, **detail, "state": record.state})]
