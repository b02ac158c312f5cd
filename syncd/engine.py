"""One run of one tenant: extract -> stage -> plan -> push -> acknowledge -> summary.

The only module that knows sources, the store and the target together.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from syncd import http, plan
from syncd.config import TenantConfig
from syncd.model import ENTITIES, PLURAL, Entity, RecordError
from syncd.sources import Source, SourceError, open_source
from syncd.store import Call, Store, utcnow
from syncd.target import InvalidResponse, Outcome, ProvisionClient

log = structlog.get_logger("syncd.engine")

COMPLETED, WITH_ERRORS, HELD, FAILED = "completed", "completed_with_errors", "held", "failed"
COUNT_KEYS = ("created", "updated", "unchanged", "removed", "failed")


# (phase, done, total or None): extract counts records read, plan the calls planned, push calls sent.
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class Options:
    dry_run: bool = False
    force: bool = False
    full: bool = False


@dataclass
class Run:
    """The live state of one run, turned into the SPEC §3 summary at the end."""

    tenant: TenantConfig
    run_id: str
    options: Options
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=utcnow)
    complete: bool = False
    failure: str | None = None
    errors: int = 0
    failed_extract: dict[Entity, int] = field(default_factory=lambda: dict.fromkeys(ENTITIES, 0))
    unreadable: int = 0
    calls: int = 0
    planned_calls: int = 0
    counts: dict[Entity, dict[str, int]] = field(default_factory=dict)
    progress: Progress | None = None

    def report(self, phase: str, done: int, total: int | None = None) -> None:
        if self.progress:
            self.progress(phase, done, total)

    @property
    def status(self) -> str:
        if self.failure:
            return FAILED
        return WITH_ERRORS if self.errors else COMPLETED

    def summary(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant.name,
            "run_id": self.run_id,
            "status": self.status,
            "dry_run": self.options.dry_run,
            "counts": {PLURAL[e]: {k: self.counts.get(e, {}).get(k, 0) for k in COUNT_KEYS} for e in ENTITIES},
            "calls": self.calls,
            "planned_calls": self.planned_calls,
            "duration_s": round(time.monotonic() - self.started, 3),
        }


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run(tenant: TenantConfig, store: Store, options: Options = Options(),
        show: Callable[[str], None] | None = None, source: Source | None = None,
        client: ProvisionClient | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Sync one tenant once; return the summary. ``show`` receives the dry-run plan lines,
    ``progress`` the phase counters (for a progress bar on a terminal)."""
    state = Run(tenant, new_run_id(), options, progress=progress)
    structlog.contextvars.bind_contextvars(tenant=tenant.name, run_id=state.run_id)
    try:
        store.start_run(state.run_id, tenant.name, dry_run=options.dry_run, force=options.force)
        log.info("sync.started", dry_run=options.dry_run, force=options.force)
        try:
            _sync(state, store, source or open_source(tenant, store.path.parent, _today(tenant)),
                  client or ProvisionClient(tenant.target), show)
        except BaseException as exc:
            state.failure = _describe(exc)
            _finish(state, store)
            raise
        return _finish(state, store)
    finally:
        structlog.contextvars.unbind_contextvars("tenant", "run_id")


def _sync(state: Run, store: Store, source: Source, client: ProvisionClient,
          show: Callable[[str], None] | None) -> None:
    tenant = state.tenant.name
    try:
        source.check()
    except (http.HttpError, SourceError) as exc:
        state.failure = f"source authorization failed: {exc}"
        log.error("sync.source_auth_failed", error=str(exc))
        return
    store.reset_stage(tenant)
    _extract(state, store, source)
    store.build_desired(tenant, state.tenant.roles, state.tenant.time_zone)
    if state.complete:
        for source_id, course_id, user_id, missing in store.dangling_enrollments(tenant):
            _record_failed(state, store, "enrollment", source_id, "extract",
                           f"enrollment refers to a {missing} that the source does not have",
                           course_id=course_id, user_id=user_id)
    store.classify(tenant, state.options.force)
    state.planned_calls = plan.build(store, tenant)
    state.report("plan", state.planned_calls, state.planned_calls)
    if state.options.dry_run:
        _show_plan(state, store, show)
        state.counts = _planned_counts(store, tenant)
    else:
        store.restore_returning(tenant)
        _push(state, store, client)
        state.counts = store.outcome_counts(tenant, state.started_at)
    for entity in ENTITIES:
        state.counts[entity]["failed"] += state.failed_extract[entity]
        state.counts[entity]["removed"] = 0
    _removals(state, store)


def _extract(state: Run, store: Store, source: Source) -> None:
    try:
        read = 0
        for page in source.extract():
            if http.stopping.is_set():
                state.failure = "stopped by a signal during the extract"
                return
            read += len(page)
            state.report("extract", read)
            for error in store.stage(state.tenant.name, page):
                if not error.message.startswith("duplicate id"):
                    state.unreadable += 1
                _record_failed(state, store, error.entity, error.source_id, "extract", error.message)
                state.failed_extract[error.entity] += 1
        state.complete = source.complete
    except (http.HttpError, SourceError) as exc:
        state.failure = f"extract failed: {exc}"
        log.error("sync.extract_failed", error=str(exc), source_requests=source.requests)
    log.info("sync.extracted", complete=state.complete, source_requests=source.requests)


def _removals(state: Run, store: Store) -> None:
    """Tombstone what left scope, but only on a complete extract in which every record was readable."""
    if not state.complete or state.failure:
        log.info("sync.removals_skipped", reason="the extract is incomplete: nothing is inferred removed")
        return
    if state.unreadable:
        log.warning("sync.removals_skipped", unreadable_records=state.unreadable,
                    reason="some source records could not be read; one of them may be an object that "
                           "only looks removed")
        return
    removed = store.removals(state.tenant.name, apply=not state.options.dry_run)
    for entity, count in removed.items():
        state.counts[entity]["removed"] = count


# --- push ----------------------------------------------------------------------------------


def _push(state: Run, store: Store, client: ProvisionClient) -> None:
    """Send the planned calls, at most ``concurrency`` in flight; acknowledge each as it returns.

    Only this thread writes to SQLite; workers only do HTTP.
    """
    tenant = state.tenant
    in_flight: dict[Future[Outcome], Call] = {}
    window = tenant.target.concurrency * 2
    with ThreadPoolExecutor(tenant.target.concurrency, thread_name_prefix="push") as pool:
        try:
            for sent, call in enumerate(store.calls(tenant.name, with_sids=not state.options.force), 1):
                if http.stopping.is_set():
                    state.failure = state.failure or "stopped by a signal: the calls not yet sent wait for the next run"
                if state.failure:
                    break
                in_flight[pool.submit(client.provision, call)] = call
                if len(in_flight) >= window:
                    _settle(state, store, in_flight, FIRST_COMPLETED)
                    state.report("push", sent - len(in_flight), state.planned_calls)
        finally:
            # Whatever stopped us, every call already sent is waited for and acknowledged.
            _settle(state, store, in_flight, ALL_COMPLETED)
            state.calls = client.requests
            state.report("push", state.calls, max(state.planned_calls, state.calls))


def _settle(state: Run, store: Store, in_flight: dict[Future[Outcome], Call], how: str) -> None:
    """Collect the calls that returned and acknowledge them together (one transaction)."""
    done, _ = wait(list(in_flight), return_when=how)
    acks: list[tuple[Call, Outcome]] = []
    for future in done:
        call = in_flight.pop(future)
        try:
            acks.append((call, future.result()))
        except http.AuthError as exc:
            state.failure = f"the target refused the token: {exc}"
            log.error("sync.target_auth_failed", error=str(exc))
        except (http.HttpError, InvalidResponse) as exc:
            _call_failed(state, store, call, exc.detail, exc.status)
    store.acknowledge(state.tenant.name, ((call, outcome.sids) for call, outcome in acks))
    for call, outcome in acks:
        for entity, problem in outcome.problems.items():
            _record_failed(state, store, entity, _source_id(call, entity), "push",
                           f"not acknowledged: {problem}", course_id=call.course_id, user_id=call.user_id,
                           name=_name(call, entity))


def _call_failed(state: Run, store: Store, call: Call, message: str, status: int | None) -> None:
    entity: Entity = "enrollment" if call.enrollment_body else ("user" if call.user_id else "course")
    if status is None or status == 429 or status >= 500:
        message += " (will be retried on the next run)"
    _record_failed(state, store, entity, _source_id(call, entity), "push", message, status,
                   course_id=call.course_id, user_id=call.user_id, name=_name(call, entity))


def _name(call: Call, entity: Entity) -> str | None:
    """What an admin knows the record by: "Ann Smith in Biology 101", "Ann Smith", "Biology 101"."""
    title = call.course_body.get("title")
    person = (f"{call.user_body.get('firstName', '')} {call.user_body.get('lastName', '')}".strip()
              if call.user_body else None)
    if entity == "course":
        return title
    if entity == "user":
        return person
    return f"{person} in {title}" if person and title else person or title


def _source_id(call: Call, entity: Entity) -> str:
    if entity == "course":
        return call.course_id
    if entity == "user":
        return call.user_id or ""
    return call.enrollment_source_id or f"{call.course_id}/{call.user_id}"


def _record_failed(state: Run, store: Store, entity: Entity, source_id: str, stage: str, message: str,
                   http_status: int | None = None, course_id: str | None = None,
                   user_id: str | None = None, name: str | None = None) -> None:
    state.errors += 1
    attempts = store.record_error(state.run_id, state.tenant.name, entity, source_id, stage, message,
                                  http_status, course_id, user_id, name)
    log.warning("sync.record_failed", entity=entity, source_id=source_id, name=name, stage=stage,
                http_status=http_status, message=message, attempts=attempts,
                course_id=course_id if entity != "course" else None,
                user_id=user_id if entity == "enrollment" else None)


# --- summary -------------------------------------------------------------------------------


def _finish(state: Run, store: Store) -> dict[str, Any]:
    summary = state.summary()
    store.finish_run(state.run_id, state.status, summary, state.failure, state.complete)
    level = "error" if state.failure else ("warning" if state.errors else "info")
    getattr(log, level)("sync.finished", status=summary["status"], counts=summary["counts"],
                        calls=summary["calls"], duration_s=summary["duration_s"],
                        dry_run=state.options.dry_run, errors=state.errors, message=state.failure)
    return summary


def _planned_counts(store: Store, tenant: str) -> dict[Entity, dict[str, int]]:
    changes = store.change_counts(tenant)
    return {e: {"created": changes[e].get("create", 0), "updated": changes[e].get("update", 0),
                "unchanged": changes[e].get("none", 0), "failed": 0} for e in ENTITIES}


def _today(tenant: TenantConfig) -> date:
    """The day on which enrollment endDates are judged: the tenant's, else this machine's."""
    if tenant.time_zone:
        return datetime.now(ZoneInfo(tenant.time_zone)).date()
    return datetime.now().astimezone().date()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


# --- dry-run plan --------------------------------------------------------------------------


def _show_plan(state: Run, store: Store, show: Callable[[str], None] | None) -> None:
    if show is None:
        return
    tenant = state.tenant.name
    show(f"plan for {tenant}: {state.planned_calls} provision call(s)")
    for call in store.calls(tenant, with_sids=not state.options.force):
        parts = [("course", (call.course_id,), call.course_id, call.course_body)]
        if call.user_id and call.user_body is not None:
            parts.append(("user", (call.user_id,), call.user_id, call.user_body))
            if call.enrollment_body is not None:
                parts.append(("enrollment", (call.course_id, call.user_id),
                              f"{call.course_id}/{call.user_id}", call.enrollment_body))
        prefix = f"  call {call.seq}:"
        for entity, key, label, body in parts:
            show(f"{prefix:<13} {_describe_change(store, tenant, entity, key, label, body)}")
            prefix = ""


def _describe_change(store: Store, tenant: str, entity: Entity, key: tuple[str, ...], label: str,
                     body: dict[str, Any]) -> str:
    old = store.acked_body(entity, tenant, key)
    new_fields = _flatten(body)
    if old is None:
        fields = " ".join(f"{k}={v!r}" for k, v in new_fields.items())
        return f"create {entity} {label}: {fields}"
    old_fields = _flatten(old)
    changed = [f"{k}: {old_fields.get(k)!r} -> {new_fields.get(k)!r}"
               for k in sorted(set(old_fields) | set(new_fields)) if old_fields.get(k) != new_fields.get(k)]
    if not changed:
        return f"(unchanged {entity} {label}, carried by this call)"
    return f"update {entity} {label}: " + "; ".join(changed)


def _flatten(body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in body.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


__all__ = ["FAILED", "HELD", "Options", "RecordError", "run"]
