"""The edge: parses commands, calls the engine, turns errors into messages and exit codes.

Command output (tables, --json, --csv) goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC
from importlib import resources
from typing import Any

from syncd import config as configuration
from syncd import engine, lock, logs, render
from syncd.lease import LeaseLost
from syncd.render import render_summary
from syncd.startup import warn_if_exposed
from syncd.store import StateError, Store

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_HELD, EXIT_BUSY = 0, 1, 2, 3, 4
STATUS_EXIT = {engine.COMPLETED: EXIT_OK, engine.WITH_ERRORS: EXIT_ERRORS, engine.FAILED: EXIT_ERRORS,
               engine.HELD: EXIT_HELD}
ERROR_COLUMNS = ("run_id", "tenant", "entity", "source_id", "name", "stage", "http_status", "message", "attempts",
                 "first_seen", "last_seen", "next_retry_at", "course_id", "user_id")


QUIET_HELP = "only the result: no progress, no informational lines (warnings and errors still on stderr)"
DEMO_PORT_BASE = 8471


class UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        if argv is None:  # the `syncd` command, about to exit (not a caller that goes on)
            # Python's exit collects every object once more, the imported modules' included:
            # ~50 ms of each command, to free memory the process returns as it ends anyway.
            gc.freeze()


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except configuration.ConfigError as exc:
        print(f"syncd: invalid configuration ({configuration.config_path(args.config)}):", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LeaseLost as exc:  # the PostgreSQL state store cannot be reached (no password in the text)
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    except KeyboardInterrupt:
        return _interrupted()
    except StateError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    except OSError as exc:
        print(f"syncd: {exc.filename or 'error'}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERRORS
    except Exception as exc:  # noqa: BLE001 - the edge: one clear line, never a traceback
        if _caused_by_interrupt(exc):
            return _interrupted()
        print(f"syncd: unexpected error: {type(exc).__name__}: {logs.redact(str(exc))} "
              "(please report it; run with log_level = \"debug\" for details)", file=sys.stderr)
        return EXIT_ERRORS


def _interrupted() -> int:
    # A second Ctrl-C while worker threads finish ends the process at once, without a traceback.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    print("syncd: interrupted", file=sys.stderr)
    return 130


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    """Whether Ctrl-C is what started this error (an error raised while handling it)."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc, seen = exc.__context__, seen + 1
    return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncd", description="Roster sync for SmarterProctoring.")
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $SYNCD_CONFIG, else /etc/syncd/syncd.toml)")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    # --quiet is accepted after the command too; SUPPRESS keeps the subparser from resetting it.
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="the daemon: schedule every enabled tenant until SIGTERM")
    run.set_defaults(handler=cmd_run)

    sync = commands.add_parser("sync", help="run one sync now, in this process", parents=[quiet])
    sync.add_argument("tenants", nargs="*", metavar="TENANT")
    sync.add_argument("--all", action="store_true", help="every enabled tenant")
    sync.add_argument("--dry-run", action="store_true", help="extract and diff, print the plan, change nothing")
    sync.add_argument("--full", action="store_true", help="a full extract, no delta run (sees hard deletes)")
    sync.add_argument("--force", action="store_true",
                      help="push every current record again, without ids.sid (repairs a target)")
    sync.add_argument("--json", action="store_true", help="print the run summary as one JSON object")
    sync.add_argument("--no-wait", action="store_true", help="exit 4 instead of waiting for a busy tenant")
    sync.add_argument("--only", metavar="KIND:ID", type=_only,
                      help="sync one object now: user:ID or course:ID (the source's id), with its enrollments")
    sync.set_defaults(handler=cmd_sync)

    approve = commands.add_parser("approve", help="release what a held run held back, once")
    approve.add_argument("tenant", metavar="TENANT")
    approve.add_argument("--run", metavar="ID", help="the held run (default: the tenant's last held run)")
    approve.set_defaults(handler=cmd_approve)

    status = commands.add_parser("status", help="last runs and next scheduled run per tenant")
    status.add_argument("tenant", nargs="?")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    explain = commands.add_parser("explain", parents=[quiet],
                                  help="why is this record (not) in the proctoring platform?")
    explain.add_argument("tenant", metavar="TENANT")
    explain.add_argument("record", metavar="RECORD",
                         help="user:ID, course:ID, enrollment:CLASS_ID/USER_ID or exam:ID (the source's ids)")
    explain.add_argument("--json", action="store_true", help="the same answer as one JSON object")
    explain.set_defaults(handler=cmd_explain)

    errors = commands.add_parser("errors", help="the sync errors of the last run (or --run ID)")
    errors.add_argument("tenant", nargs="?")
    errors.add_argument("--run", metavar="ID")
    output = errors.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--csv", action="store_true")
    errors.set_defaults(handler=cmd_errors)

    auth = commands.add_parser("auth", help="authorize a tenant's Canvas developer key (stores a refresh token)")
    auth.add_argument("tenant", metavar="TENANT")
    auth.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                      help="how long to wait for the authorization (default 600)")
    auth.set_defaults(handler=cmd_auth)

    cfg = commands.add_parser("config", help="check a config file or print an annotated example")
    cfg_commands = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cfg_commands.add_parser("validate", help="check the config file").set_defaults(handler=cmd_config_validate)
    cfg_commands.add_parser("example", help="print an annotated example").set_defaults(handler=cmd_config_example)

    state = commands.add_parser("state", help="move the state store (SPEC §11)")
    state_commands = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    copy = state_commands.add_parser("copy", help="copy the SQLite state into an empty PostgreSQL database")
    copy.add_argument("--to", required=True, metavar="URL",
                      help="postgresql://… (or env:NAME, file:/path, credential:NAME holding it)")
    copy.set_defaults(handler=cmd_state_copy)
    alerts = commands.add_parser("alerts", help="check the alert channels of [alerts] urls")
    alerts_commands = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    alerts_commands.add_parser("test", help="send one test message to every channel").set_defaults(
        handler=cmd_alerts_test)

    demo = commands.add_parser("demo", help="sync the built-in sandbox on loopback and show the result",
                               parents=[quiet])
    demo.add_argument("--dir", default="syncd-demo", help="where the demo keeps its config and state")
    demo.add_argument("--source", choices=("oneroster", "canvas", "gg4l"), default="oneroster")
    demo.add_argument("--serve", action="store_true",
                      help="keep the sandbox running on fixed loopback ports until Ctrl-C, with a config that "
                           "points at it, to try `syncd run`, `syncd explain` and the rest")
    demo.add_argument("--port-base", type=int, default=DEMO_PORT_BASE, metavar="PORT",
                      help=f"--serve: the first of its 4 ports (default {DEMO_PORT_BASE}: OneRoster, Canvas, "
                           "provision, GG4L)")
    demo.set_defaults(handler=cmd_demo)
    from syncd import gg4l_cli  # `syncd tenants …` and `syncd gg4l discover`

    gg4l_cli.register(commands)
    from syncd import exams_cli  # `syncd exams TENANT`

    exams_cli.register(commands)
    return parser


def cmd_state_copy(args: argparse.Namespace) -> int:
    from syncd import state_copy
    from syncd.store import DB_NAME

    config = _load(args)
    try:
        url = configuration.resolve_secret(args.to)
    except ValueError as exc:
        raise UsageError(f"--to: {exc}") from None
    if not url.startswith(("postgresql://", "postgres://")):
        raise UsageError("--to: expected a postgresql:// URL")
    try:
        counts = state_copy.copy_state(config.daemon.state_dir / DB_NAME, url,
                                       progress=lambda table, rows: print(f"{table:<20} {rows:>10} rows"))
    except state_copy.CopyError as exc:
        print(f"syncd: state copy: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    print(f"copied {sum(counts.values())} rows, counts verified; {config.daemon.state_dir / DB_NAME} is unchanged")
    return EXIT_OK


def _only(value: str) -> tuple[str, str]:
    kind, _, source_id = value.partition(":")
    if kind not in ("user", "course", "exam") or not source_id:
        raise argparse.ArgumentTypeError("expected user:ID, course:ID or exam:ID (exam:quiz:123)")
    return kind, source_id


def _load(args: argparse.Namespace) -> configuration.Config:
    config = configuration.load(configuration.config_path(args.config))
    level = config.daemon.log_level
    if getattr(args, "quiet", False) and level in ("debug", "info"):
        level = "warning"  # --quiet: no informational lines; what needs an admin still shows
    logs.configure(level, config.daemon.log_format)
    logs.register_secrets(config.secrets)
    warn_if_exposed(config)
    return config


# --- sync ----------------------------------------------------------------------------------


def cmd_sync(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.all and args.tenants:
        raise UsageError("give tenant names or --all, not both")
    if args.all:
        names = [n for n, t in config.tenants.items() if t.enabled]
    elif args.tenants:
        from syncd import gg4l_cli  # GG4L district tenants (gg4l-…) live in the state store

        try:
            config = gg4l_cli.with_districts(config, args.tenants)
        except gg4l_cli.NotRunnable as exc:
            print(f"syncd: {exc}", file=sys.stderr)
            return EXIT_ERRORS
        unknown = [n for n in args.tenants if n not in config.tenants]
        if unknown:
            raise UsageError(f"unknown tenant(s): {', '.join(unknown)} (configured: {', '.join(config.tenants)})")
        names = list(dict.fromkeys(args.tenants))
    else:
        raise UsageError("name the tenant(s) to sync, or --all")
    if args.only and len(names) != 1:
        raise UsageError("--only needs exactly one tenant")
    options = engine.Options(dry_run=args.dry_run, force=args.force, full=args.full, only=args.only)
    store = Store.open(config.daemon.state_dir, config.state_url)
    worst = EXIT_OK
    try:
        for name in names:
            code = _sync_one(config, store, name, options, args)
            worst = max(worst, code)  # busy 4 > held 3 > errors 1 > ok 0
    finally:
        store.close()
    return worst


def _sync_one(config: configuration.Config, store: Store, name: str, options: engine.Options,
              args: argparse.Namespace) -> int:
    quiet = args.quiet
    bar = ProgressBar(name) if sys.stderr.isatty() and not args.json and not quiet else None

    def waiting(message: str) -> None:
        if not quiet:
            if bar:
                bar.interrupt()
            print(f"syncd: {message}", file=sys.stderr, flush=True)

    def show_line(line: str) -> None:
        if bar:
            bar.interrupt()  # the bar's line ends before a line of output starts
        print(line, flush=True)

    # --quiet keeps a dry run's plan (it is the result) and drops --only's running commentary.
    show = None if args.json or (quiet and not args.dry_run) else render.printer(show_line)
    if args.only and show:
        show_line(f"{name}: syncing only {args.only[0]} {args.only[1]}")
    try:
        with store.hold(name, wait=not args.no_wait, on_wait=waiting):
            try:
                summary = engine.run(config.tenants[name], store, options, show=show,
                                     progress=bar.update if bar else None)
            finally:
                if bar:
                    bar.close()
            store.prune(config.daemon.retention_days)
    except lock.Busy as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except (NotImplementedError, LeaseLost) as exc:
        print(f"syncd: {name}: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(render_summary(summary), flush=True)
    return STATUS_EXIT.get(summary["status"], EXIT_ERRORS)


class ProgressBar:
    """One line per phase on a terminal (extract, scope, plan, push, removals), redrawn in place
    at most 10x/s. ``interrupt`` ends the line before other output, so the two never share a line."""

    UNITS = {"extract": "records read", "scope": "", "removals": ""}

    def __init__(self, tenant: str):
        self.tenant = tenant
        self.phase = ""
        self.drawn = 0.0
        self.open = False  # a line is drawn and not yet ended
        self.width = 0

    def update(self, phase: str, done: int, total: int | None) -> None:
        import time

        now = time.monotonic()
        if phase != self.phase:
            self.interrupt()
            self.phase, self.drawn = phase, 0.0
        if now - self.drawn < 0.1 and (total is None or done < total):
            return
        self.drawn = now
        if total:
            filled = int(30 * min(done, total) / total)
            line = f"{self.tenant} {phase:<8} [{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,}"
        else:
            unit = self.UNITS.get(phase, "done")
            line = f"{self.tenant} {phase:<8} {done:,} {unit}" if unit else f"{self.tenant} {phase:<8} …"
        # Padded to the last line drawn, so that a shorter line leaves nothing of the longer one behind.
        sys.stderr.write(f"\r{line:<{self.width}}")
        sys.stderr.flush()
        self.open, self.width = True, len(line)

    def interrupt(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.open, self.width = False, 0
            self.drawn = 0.0  # redraw at once after the interruption

    def close(self) -> None:
        self.interrupt()


# --- status and errors ---------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    names = [args.tenant] if args.tenant else list(config.tenants)
    if args.tenant and args.tenant not in config.tenants:
        raise UsageError(f"unknown tenant: {args.tenant}")
    store = Store.open(config.daemon.state_dir, config.state_url)
    try:
        holders = {h.name: h for h in store.holders() if h.kind == "tenant"} if store.url else None
        report = logs.redact([_tenant_status(config, store, name, holders) for name in names])
    finally:
        store.close()
    from syncd import gg4l_cli

    districts = [] if args.tenant else gg4l_cli.status_rows(config)  # GG4L districts: state and expiry
    if args.json:
        print(json.dumps(report + districts if not args.tenant else report[0]))
        return EXIT_OK
    for row in districts:
        print(gg4l_cli.status_line(row))
    for entry in report:
        upcoming = f" · next run {entry['next_run']}" if entry["next_run"] else ""
        if entry["degraded"]:
            print(f"{entry['tenant']}: DEGRADED: the last {entry['failed_in_a_row']} runs failed")
        print(f"{entry['tenant']}: {'enabled' if entry['enabled'] else 'disabled'} · schedule "
              f"{entry['schedule']}{upcoming} · {_running_text(entry)}")
        if not entry["runs"]:
            print("  no runs yet")
        for run in entry["runs"]:
            counts = run["counts"] or {}
            changed = ", ".join(_count_line(e, c) for e, c in counts.items())
            print(f"  {run['started_at']}  {run['status']:<22} {run['run_id']}  calls {run['calls'] or 0:<6} "
                  f"{(run['duration_s'] or 0):7.2f}s  errors {run['errors']:<4} {changed}"
                  f"{' (dry run)' if run['dry_run'] else ''}")
            if run.get("message"):
                print(f"      {run['message']}")
    return EXIT_OK


def _count_line(entity: str, counts: dict[str, int]) -> str:
    failed = f" !{counts['failed']}" if counts.get("failed") else ""
    return f"{entity} +{counts.get('created', 0)} ~{counts.get('updated', 0)} -{counts.get('removed', 0)}{failed}"


def _running_text(entry: dict[str, Any]) -> str:
    where = entry.get("running_on")
    if not entry["running"]:
        return "idle"
    return f"RUNNING now on {where['node']} since {where['since']}" if where else "RUNNING now"


def _tenant_status(config: configuration.Config, store: Store, name: str,
                   holders: dict[str, Any] | None = None) -> dict[str, Any]:
    tenant = config.tenants[name]
    runs = []
    for run in store.runs(name, limit=5):
        summary = json.loads(run["summary"]) if run["summary"] else {}
        runs.append({"run_id": run["run_id"], "status": run["status"], "started_at": run["started_at"],
                     "finished_at": run["finished_at"], "dry_run": bool(run["dry_run"]),
                     "calls": run["calls"], "duration_s": run["duration_s"],
                     "errors": store.error_count(run["run_id"]), "counts": summary.get("counts"),
                     "message": run["message"]})
    from datetime import UTC, datetime

    from syncd import schedule

    now = datetime.now(UTC)
    upcoming = schedule.next_run(tenant.schedule, store.last_started(name), now) if tenant.enabled else None
    failed = store.failed_in_a_row(name)
    return {"tenant": name, "enabled": tenant.enabled, "schedule": tenant.schedule,
            "degraded": failed >= tenant.safety.degraded_after, "failed_in_a_row": failed,
            "next_run": upcoming.isoformat(timespec="seconds").replace("+00:00", "Z") if upcoming else None,
            "runs": runs, **_running(config, name, holders)}


def _running(config: configuration.Config, name: str, holders: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the tenant runs now, and on PostgreSQL on which node and since when."""
    if holders is None:
        return {"running": _is_running(config, name)}
    held = holders.get(name)
    since = held.since.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if held else None
    return {"running": held is not None, "running_on": {"node": held.node, "since": since} if held else None}


def _is_running(config: configuration.Config, name: str) -> bool:
    try:
        with lock.tenant_lock(config.daemon.state_dir, name, wait=False):
            return False
    except lock.Busy:
        return True


def cmd_errors(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.tenant and args.tenant not in config.tenants:
        raise UsageError(f"unknown tenant: {args.tenant}")
    store = Store.open(config.daemon.state_dir, config.state_url)
    try:
        if args.run:
            run_ids = [args.run]
        else:
            names = [args.tenant] if args.tenant else list(config.tenants)
            run_ids = [r for r in (store.last_run_id(n) for n in names) if r]
        rows = logs.redact([r for r in store.errors(run_ids) if not args.tenant or r["tenant"] == args.tenant])
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=ERROR_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    elif not rows:
        print("no sync errors" + (f" in run {args.run}" if args.run else " in the last run"))
    else:
        print(f"{'entity':<11} {'source id':<20} {'name':<28} {'stage':<8} {'http':<5} {'tries':<5} "
              f"{'first seen':<20} {'last seen':<20} message")
        for row in rows:
            print(f"{row['entity']:<11} {row['source_id'][:20]:<20} {(row['name'] or '-')[:28]:<28} "
                  f"{row['stage']:<8} {row['http_status'] or '-'!s:<5} {row['attempts']:<5} "
                  f"{row['first_seen'][:19]:<20} {row['last_seen'][:19]:<20} {row['message']}")
        print(f"{len(rows)} error(s) · run {', '.join(sorted({r['run_id'] for r in rows}))}")
    return EXIT_OK


# --- approve -------------------------------------------------------------------------------


def cmd_approve(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.tenant not in config.tenants:
        raise UsageError(f"unknown tenant: {args.tenant}")
    store = Store.open(config.daemon.state_dir, config.state_url)
    try:
        run_id, held = store.approve(args.tenant, args.run)
    except LookupError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    finally:
        store.close()
    words = {"remove": "removals", "update": "updates"}
    what = ", ".join(f"{n} {entity} {words.get(kind, kind)}" for entity, kinds in held.items()
                     for kind, n in kinds.items())
    print(f"{args.tenant}: approved run {run_id} ({what or 'nothing held'}). The next run, scheduled or manual, "
          "applies them if the source still shows them; the thresholds stay.")
    return EXIT_OK


# --- the daemon ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from syncd import daemon

    return daemon.main(configuration.config_path(args.config))


def cmd_alerts_test(args: argparse.Namespace) -> int:
    """One message to every channel, now, in this process: exit 0 when every channel took it."""
    import socket

    from syncd import alerts

    config = _load(args)
    if not config.alerts.urls:
        raise UsageError(f"no alert channel: {config.path} has no [alerts] urls")
    message = alerts.Message("syncd: test alert", f"A test message from syncd on {socket.gethostname()} "
                             f"({config.path}): this channel receives syncd's alerts.")
    results = alerts.deliver(config.alerts.urls, message, delays=(1.0,))
    for number, sent in enumerate(results, 1):
        print(f"channel {number}: {'sent' if sent else 'FAILED (see the log above)'}")
    return EXIT_OK if all(results) else EXIT_ERRORS


# --- config and demo -----------------------------------------------------------------------


def cmd_config_validate(args: argparse.Namespace) -> int:
    path = configuration.config_path(args.config)
    config = configuration.load(path)
    names = ", ".join(config.tenants)
    print(f"{path}: valid · {len(config.tenants)} tenant(s): {names} · state in {config.daemon.state_dir}")
    return EXIT_OK


def cmd_config_example(_args: argparse.Namespace) -> int:
    print(example_config(), end="")
    return EXIT_OK


def example_config() -> str:
    return resources.files("syncd").joinpath("example.toml").read_text(encoding="utf-8")


def cmd_demo(args: argparse.Namespace) -> int:
    from syncd import demo

    if args.serve:
        last = 65535 - len(demo.PORTS) + 1
        if not 1024 <= args.port_base <= last:
            raise UsageError(f"--port-base must be between 1024 and {last}, not {args.port_base}")
        return demo.serve(args.dir, args.port_base)
    return demo.main(args.dir, args.source, quiet=args.quiet)


# --- explain -------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    import difflib

    from syncd import explain

    config = _load(args)
    tenant = config.tenants.get(args.tenant)
    if tenant is None:
        close = difflib.get_close_matches(args.tenant, list(config.tenants), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (configured: {', '.join(config.tenants)})"
        raise UsageError(f"unknown tenant: {args.tenant}{hint}")
    try:
        kind, ident = explain.parse_subject(args.record)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store = Store.open(config.daemon.state_dir, config.state_url)
    try:
        report = explain.explain(store, args.tenant, kind, ident, tenant.roles,
                                 exams_configured=tenant.exams is not None)
    finally:
        store.close()
    print(json.dumps(report, indent=2) if args.json else render.render_explain(report))
    return EXIT_OK if report["found"] else EXIT_ERRORS


# --- auth ----------------------------------------------------------------------------------


def cmd_auth(args: argparse.Namespace) -> int:
    from syncd.sources import SourceError, canvas_auth

    config = _load(args)
    tenant = config.tenants.get(args.tenant)
    if tenant is None:
        raise UsageError(f"unknown tenant: {args.tenant}")
    if tenant.source.type != "canvas" or not (tenant.source.client_id and tenant.source.client_secret):
        raise UsageError(f"{args.tenant}: `syncd auth` is for Canvas sources with a developer key "
                         "(source.client_id and source.client_secret)")
    stdin = _StdinLines()
    try:
        from syncd.sources.canvas_exams import scopes as exam_scopes

        canvas_auth.authorize(args.tenant, tenant.source, config.daemon.state_dir,
                              lambda line: print(line, flush=True), stdin.line, args.timeout,
                              exam_scopes(tenant.exams))
    except SourceError as exc:
        print(f"syncd: {args.tenant}: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    return EXIT_OK


class _StdinLines:
    """Lines pasted on stdin, read without blocking the wait for the loopback redirect."""

    def __init__(self) -> None:
        self.closed = sys.stdin is None or sys.stdin.closed

    def line(self, wait: float) -> str | None:
        import select
        import time

        if self.closed:
            time.sleep(wait)
            return None
        ready, _, _ = select.select([sys.stdin], [], [], wait)
        if not ready:
            return None
        text = sys.stdin.readline()
        if not text:
            self.closed = True  # end of input: keep waiting for the listener only
            return None
        return text.strip() or None


if __name__ == "__main__":
    sys.exit(main())
