"""``syncd tenants [--json]``, ``syncd tenants map|pause|resume TENANT`` and ``syncd gg4l discover [--json]``.

Registered on cli.py's parser by :func:`register`; errors are cli's (``UsageError``: exit 2). Output
goes to stdout, logs to stderr, and no secret appears in either: a district's token is kept as the
reference the admin gave (``env:``, ``file:``, ``credential:``), resolved only to check that it works.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from syncd import config as configuration

# The GG4L modules are imported by the commands that use them: cli.py's parser registers these
# commands, and `syncd sync TENANT` asks with_districts, on every run, GG4L or not (~25 ms).
if TYPE_CHECKING:
    from syncd.gg4l.lifecycle import District

EXIT_OK, EXIT_FAILED = 0, 1
COLUMNS = ("tenant", "origin", "state", "mode", "install_sid", "expiry", "last_seen", "guid")


def _say(text: str) -> None:
    """One line of command output on stdout (cli.py's T20 exemption does not reach this module)."""
    sys.stdout.write(text + "\n")


def register(commands: Any) -> None:
    tenants = commands.add_parser("tenants", help="every tenant (from the config and from GG4L) with its state")
    tenants.add_argument("--json", action="store_true", help="print one JSON array")
    tenants.set_defaults(handler=cmd_tenants)
    actions = tenants.add_subparsers(dest="tenants_command", metavar="ACTION")
    mapping = actions.add_parser("map", help="give a GG4L district its SmarterProctoring install (and token)")
    mapping.add_argument("tenant", metavar="TENANT")
    mapping.add_argument("--install-sid", required=True, metavar="SID")
    mapping.add_argument("--token", metavar="REF", help="env:NAME, file:/path or credential:NAME (never the value)")
    mapping.set_defaults(handler=cmd_map)
    for name, text in (("pause", "stop syncing a GG4L district (nothing is removed)"),
                       ("resume", "let a paused GG4L district sync again")):
        action = actions.add_parser(name, help=text)
        action.add_argument("tenant", metavar="TENANT")
        action.set_defaults(handler=cmd_pause, paused=name == "pause")

    gg4l = commands.add_parser("gg4l", help="GG4L School Passport auto-provisioning")
    gg4l_actions = gg4l.add_subparsers(dest="gg4l_command", required=True, metavar="ACTION")
    discover = gg4l_actions.add_parser("discover", help="poll the Partner API now and show what it lists")
    discover.add_argument("--json", action="store_true", help="print one JSON object")
    discover.set_defaults(handler=cmd_discover)


def _setup(args: argparse.Namespace) -> tuple[configuration.Config, Any]:
    from syncd import cli
    from syncd.gg4l_store import DistrictStore
    from syncd.store import Store

    config = cli._load(args)
    if config.state_url:  # the cluster's districts, in the shared PostgreSQL store (SPEC §11)
        districts = DistrictStore.for_state(config.daemon.state_dir, config.state_url)
        return config, (districts, districts)
    store = Store.open(config.daemon.state_dir)
    return config, (store, DistrictStore(store.conn))


def _usage(message: str) -> Exception:
    from syncd import cli

    return cli.UsageError(message)


def _row(record: District) -> dict[str, Any]:
    from syncd.gg4l.partner import iso

    return {"tenant": record.tenant, "origin": "gg4l", "state": record.state, "mode": record.mode,
            "policy": record.policy, "install_sid": record.install_sid or None, "token_ref": record.token_ref or None,
            "expiry": iso(record.expiry), "last_seen": iso(record.last_seen), "guid": record.guid,
            "name": record.name, "revoked_at": iso(record.revoked_at), "purged_at": iso(record.purged_at)}


def cmd_tenants(args: argparse.Namespace) -> int:
    config, (store, districts) = _setup(args)
    try:
        rows = [{"tenant": name, "origin": "config", "state": "enabled" if tenant.enabled else "disabled",
                 "mode": None, "install_sid": tenant.target.install_sid, "expiry": None, "last_seen": None,
                 "guid": None} for name, tenant in sorted(config.tenants.items())]
        rows += [_row(record) for record in districts.districts().values()]
    finally:
        store.close()
    if args.json:
        _say(json.dumps(rows, indent=1))
    else:
        _table(rows)
    return EXIT_OK


def _table(rows: list[dict[str, Any]]) -> None:
    cells = [[str(row.get(c) if row.get(c) is not None else "-") for c in COLUMNS] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(COLUMNS)]
    _say("  ".join(c.upper().ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    for row in cells:
        _say("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _district(args: argparse.Namespace) -> tuple[configuration.Config, Any, Any, District]:
    config, (store, districts) = _setup(args)
    if config.gg4l is None:
        store.close()
        raise _usage("no [gg4l] section in the config: only GG4L districts can be mapped, paused or resumed")
    record = districts.district(args.tenant)
    if record is None:
        store.close()
        raise _usage(f"unknown GG4L tenant {args.tenant!r} (see `syncd tenants`; config tenants are edited "
                     "in the config file)")
    return config, store, districts, record


def cmd_map(args: argparse.Namespace) -> int:
    if not configuration.INSTALL_SID.match(args.install_sid):
        raise _usage("--install-sid must be letters, digits, '_' or '-' (e.g. AI0123…)")
    token = args.token or ""
    if token:
        if token.partition(":")[0] not in ("env", "file", "credential"):
            raise _usage("--token must be a reference (env:NAME, file:/path or credential:NAME), "
                         "so that the token is never stored")
        try:
            configuration.resolve_secret(token)
        except ValueError as exc:
            raise _usage(f"--token: {exc}") from None
    from syncd.gg4l.lifecycle import map_district

    config, store, districts, record = _district(args)
    try:
        updated, events = map_district(record, datetime.now(UTC), config.gg4l.rules(), args.install_sid, token)
        districts.save([updated], events)
    finally:
        store.close()
    _say(f"{updated.tenant}: mapped to install {updated.install_sid}; state {updated.state}")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    from syncd.gg4l.lifecycle import set_paused

    config, store, districts, record = _district(args)
    try:
        updated, events = set_paused(record, datetime.now(UTC), config.gg4l.rules(), args.paused)
        districts.save([updated], events)
    finally:
        store.close()
    _say(f"{updated.tenant}: {'paused' if args.paused else 'resumed'}; state {updated.state}")
    return EXIT_OK


def cmd_discover(args: argparse.Namespace) -> int:
    from syncd.gg4l.discovery import Discovery
    from syncd.gg4l.partner import PartnerClient, PartnerError, iso

    config, (store, districts) = _setup(args)
    if config.gg4l is None:
        store.close()
        raise _usage("no [gg4l] section in the config")
    gg4l = config.gg4l
    client = PartnerClient(gg4l.partner_url, gg4l.client_id, gg4l.client_secret, timeout_s=gg4l.timeout_s)
    try:
        result = _cluster_wide(config, Discovery(client, districts, gg4l.rules()).run)
    except PartnerError as exc:
        sys.stderr.write(f"syncd: discovery failed: {exc}\n")
        return EXIT_FAILED
    finally:
        store.close()
    listed = {item.guid.lower(): item for item in result.listings}
    rows = []
    for key, record in sorted(result.districts.items(), key=lambda kv: kv[1].tenant):
        row = _row(record)
        row["listed"] = key in listed
        row["data_ts"] = iso(listed[key].data_ts) if key in listed else None
        row["problem"] = (listed[key].problem or None) if key in listed else None
        rows.append(row)
    if args.json:
        _say(json.dumps({"listed": len(result.listings), "warnings": result.warnings, "districts": rows,
                          "events": [{"guid": e.guid, "event": e.event, **dict(e.detail)} for e in result.events]},
                         indent=1))
    else:
        _say(f"{len(result.listings)} district(s) listed by the Partner API")
        _table(rows)
        for warning in result.warnings:
            _say(f"warning: {warning}")
    return EXIT_OK


# --- `syncd sync gg4l-…` and `syncd status` ------------------------------------------------------


class NotRunnable(Exception):
    """A known district that may not sync now (its state says why): exit 1, not a usage error."""


def with_districts(config: configuration.Config, names: list[str]) -> configuration.Config:
    """``config`` with the named GG4L district tenants added, after a discovery of this process.

    A district's secret lives only in the memory of whoever discovered it, so ``syncd sync`` asks
    the Partner API first. A name that is no district is a usage error (exit 2); a district that may
    not sync now (pending mapping, expired, revoked, discovery down…) raises :class:`NotRunnable`.
    """
    import dataclasses

    from syncd import cli

    wanted = [n for n in names if n not in config.tenants]
    if not wanted or config.gg4l is None:
        return config
    from syncd.gg4l.service import Gg4lService
    from syncd.gg4l_store import DistrictStore

    store = DistrictStore.for_state(config.daemon.state_dir, config.state_url)
    service = None
    try:
        # Discovery first: a district GG4L lists but no daemon has seen yet is a tenant all the same.
        service = Gg4lService(config.gg4l, store)
        found = service.poll()
        unknown = [n for n in wanted if store.district(n) is None]
        if unknown:
            raise cli.UsageError(f"unknown tenant(s): {', '.join(unknown)} (configured: {', '.join(config.tenants)}; "
                                 "GG4L districts: see `syncd tenants`)")
        extra = {}
        for name in wanted:
            record = store.district(name)
            assert record is not None
            tenant = service.tenant(record) if found is not None else None
            if tenant is None:
                raise NotRunnable(_why_not(record, found is not None))
            extra[name] = dataclasses.replace(tenant, name=record.tenant)
        return dataclasses.replace(config, tenants={**config.tenants, **extra})
    finally:
        if service is not None:
            service.recorder.stop()
        store.close()


def _cluster_wide(config: configuration.Config, discover: Any) -> Any:
    """On PostgreSQL, a discovery from the command line reconciles under the cluster's discovery job,
    never beside a daemon's (SPEC §11); on SQLite, directly."""
    if not config.state_url:
        return discover()
    from syncd import lease
    from syncd.gg4l.daemon_wiring import DISCOVERY_JOB, _stamp
    from syncd.store import postgres

    with lease.cluster_job(config.state_url, DISCOVERY_JOB, _stamp(datetime.now(UTC)), node=postgres.this_node()):
        return discover()


def _why_not(record: District, discovered: bool) -> str:
    if not discovered:
        return f"{record.tenant}: the GG4L Partner API did not answer, so the district's secret is unknown; try again"
    hints = {"pending_mapping": "give it an install with `syncd tenants map`",
             "paused": "resume it with `syncd tenants resume`",
             "awaiting_data": "GG4L has not finished its first import yet",
             "expired": "its data access expired; the district must extend it",
             "recorded": "its mode creates no tenant (see [gg4l] modes)"}
    hint = hints.get(record.state, "it syncs only when active or expiring")
    return f"{record.tenant} is {record.state}: not synced ({hint})"


def status_rows(config: configuration.Config) -> list[dict[str, Any]]:
    """The GG4L districts for ``syncd status``: tenant, state, expiry, last sync (empty without [gg4l])."""
    if config.gg4l is None:
        return []
    from syncd.gg4l.partner import iso
    from syncd.gg4l_store import DistrictStore
    from syncd.store import DB_NAME

    path = config.daemon.state_dir / DB_NAME
    if not path.exists() and not config.state_url:
        return []
    store = DistrictStore.for_state(config.daemon.state_dir, config.state_url) if config.state_url \
        else DistrictStore.open(str(path))
    try:
        now = datetime.now(UTC)
        rows = []
        for record in store.districts().values():
            days = (record.expiry - now).days if record.expiry else None
            rows.append({"tenant": record.tenant, "origin": "gg4l", "state": record.state, "guid": record.guid,
                         "name": record.name, "expiry": iso(record.expiry), "expires_in_days": days,
                         "revoked_at": iso(record.revoked_at), "purged_at": iso(record.purged_at),
                         "synced_data_ts": iso(record.synced_data_ts)})
        return rows
    finally:
        store.close()


def status_line(row: dict[str, Any]) -> str:
    expiry = f" · expires {row['expiry']}" if row["expiry"] else ""
    if row["expires_in_days"] is not None and 0 <= row["expires_in_days"] <= 30:
        expiry += f" (in {row['expires_in_days']} days)"
    gone = f" · revoked {row['revoked_at']}" if row["revoked_at"] else ""
    return f"{row['tenant']}: GG4L district {row['name'] or row['guid']} · {row['state'].upper()}{expiry}{gone}"
