"""One run of one tenant: extract -> stage -> plan -> push -> acknowledge -> summary.

The only module that knows sources, the store and the target together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from syncd import delta, errors, exams, http, limits, logs, plan, safety
from syncd.config import TenantConfig
from syncd.entities import ENTITIES, PLURAL, ROSTER, SPECS, Call, Entity
from syncd.errors import RecordFailure, SyncError
from syncd.exams import Exam
from syncd.model import RecordError
from syncd.sources import DeltaRejected, Source, open_source
from syncd.store import CallLog, Store, TenantStore, utcnow
from syncd.store.staging import Remapped
from syncd.target import Outcome, ProvisionClient

log = structlog.get_logger("syncd.engine")

COMPLETED, WITH_ERRORS, HELD, FAILED = "completed", "completed_with_errors", "held", "failed"
COUNT_KEYS = ("created", "updated", "unchanged", "removed", "failed", "held")


# (phase, done, total or None): extract counts records read, plan the calls planned, push calls sent.
Progress = Callable[[str, int, int | None], None]
# Receives what a person may want to read while the run goes on, as data: a line of `--only`'s
# narrative, or an item of a dry run's plan. syncd.render turns either into text.
Show = Callable[[str | dict[str, Any]], None]


@dataclass(frozen=True)
class Options:
    dry_run: bool = False
    force: bool = False
    full: bool = False
    # ("user" | "course" | "exam", source id): extract, plan and push just that object (and a
    # user's or course's enrollments).
    only: tuple[str, str] | None = None


@dataclass
class Run:
    """The live state of one run, turned into the SPEC §3 summary at the end."""

    tenant: TenantConfig
    run_id: str
    options: Options
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=utcnow)
    complete: bool = False
    delta: bool = False  # this run read only the source's changes (syncd.delta)
    failure: str | None = None
    errors: int = 0
    failed_extract: dict[Entity, int] = field(default_factory=lambda: dict.fromkeys(ENTITIES, 0))
    unreadable: int = 0
    calls: int = 0
    planned_calls: int = 0
    counts: dict[Entity, dict[str, int]] = field(default_factory=dict)
    progress: Progress | None = None
    show: Show | None = None
    held: dict[Entity, int] = field(default_factory=lambda: dict.fromkeys(ENTITIES, 0))
    held_reasons: list[str] = field(default_factory=list)
    breaker: bool = False  # a safety threshold held something: status "held"
    plan_data: list[dict[str, Any]] | None = None
    removal_data: dict[str, Any] = field(default_factory=dict)
    exams_unnamed_error: bool = False
    exams_complete: bool = False  # every exam was read (removals of exams need it, beside `complete`)
    # Exam source id -> clear password, for this run only (never stored; the target client sends it).
    passwords: dict[str, str] = field(default_factory=dict)
    # The run began settled and kept part of the desired state: the rows mapped again, the only
    # ones the diff, the dangling check and the removals need to look at (else None: all rows).
    among: Remapped | None = None

    @property
    def entities(self) -> tuple[Entity, ...]:
        """What this tenant syncs: exams only when its config has an ``exams`` table."""
        return ENTITIES if self.tenant.exams is not None else ROSTER

    def report(self, phase: str, done: int, total: int | None = None) -> None:
        if self.progress:
            self.progress(phase, done, total)

    def say(self, line: str) -> None:
        if self.show:
            self.show(line)

    @property
    def status(self) -> str:
        if self.failure:
            return FAILED
        if self.breaker:
            return HELD
        return WITH_ERRORS if self.errors else COMPLETED

    def summary(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant.name,
            "run_id": self.run_id,
            "status": self.status,
            "dry_run": self.options.dry_run,
            "counts": {PLURAL[e]: {k: self.counts.get(e, {}).get(k, 0) for k in COUNT_KEYS} for e in self.entities},
            "calls": self.calls,
            "planned_calls": self.planned_calls,
            **({"held_because": self.held_reasons} if self.held_reasons else {}),
            **({"plan": self.plan_data} if self.plan_data is not None else {}),
            **self.removal_data,
            "duration_s": round(time.monotonic() - self.started, 3),
        }


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run(tenant: TenantConfig, state_file: Store, options: Options = Options(),
        show: Show | None = None, source: Source | None = None,
        client: ProvisionClient | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Sync one tenant once; return the summary. ``show`` receives, as data, the dry-run plan
    item by item and `--only`'s narrative lines (``render.printer`` makes text of them);
    ``progress`` the phase counters (for a progress bar on a terminal)."""
    state = Run(tenant, new_run_id(), options, progress=progress, show=show)
    store = state_file.tenant(tenant.name)
    if tenant.exams is not None:
        store.exam_key = exams.password_key(state_file.path.parent)
    structlog.contextvars.bind_contextvars(tenant=tenant.name, run_id=state.run_id)
    try:
        store.start_run(state.run_id, dry_run=options.dry_run, force=options.force)
        log.info("sync.started", dry_run=options.dry_run, force=options.force)
        try:
            _sync(state, store, source or open_source(tenant, state_file.path.parent, _today(tenant)),
                  client or ProvisionClient(tenant.target), show)
        except BaseException as exc:
            state.failure = _describe(exc)
            _finish(state, store)
            raise
        return _finish(state, store)
    finally:
        structlog.contextvars.unbind_contextvars("tenant", "run_id")


def _sync(state: Run, store: TenantStore, source: Source, client: ProvisionClient,
          show: Show | None) -> None:
    try:
        source.check()
    except SyncError as exc:  # whatever its action (retry, stop, admin): this run cannot read the source
        state.failure = f"source authorization failed: {exc}"
        log.error("sync.source_auth_failed", error=str(exc))
        return
    client.passwords = state.passwords
    # Read before staging drops it: a run that begins settled classifies only what it maps.
    began_settled = _may_settle(state) and store.settled_counts(_settled_fingerprint(state.tenant)) is not None
    delta.read(state, store, source, _extract)  # full or delta extract into stage_* (issue 15)
    state.report("scope", 0, None)  # scope, mapping and the diff: SQL without a count to show
    store.build_desired(state.tenant.roles, state.tenant.time_zone, state.tenant.exams)
    if _unchanged(state, store):
        return
    # A run that began settled had nothing dangling, to remove or to send: only what it mapped
    # again can have changed (syncd.store.settled).
    state.among = store.remapped if began_settled and not store.mapped_whole else None
    if state.complete:
        for source_id, course_id, user_id, missing in store.dangling_enrollments(state.among):
            _record_failed(state, store, RecordFailure(
                "enrollment", source_id, "extract", f"enrollment refers to a {missing} that the source does not have",
                course_id=course_id, user_id=user_id))
    _guard_completeness(state, store)
    store.classify(state.options.force, watch=state.run_id if _may_settle(state) else None,
                   only_new=state.among is not None)
    approved = store.open_approval() if not state.options.only else None
    _update_breaker(state, store, approved)
    if state.tenant.exams is not None and state.tenant.exams.window_guard:  # --force too: bookings are at stake
        _window_guard(state, store, approved)
    if not state.options.only:
        _defer_escrowed(state, store)
    state.planned_calls = plan.build(store)
    if state.options.only:
        state.planned_calls = _only(state, store)
    state.report("plan", state.planned_calls, state.planned_calls)
    if state.options.dry_run:
        _show_plan(state, store, show)
        state.counts = _planned_counts(store)
    else:
        store.restore_returning()
        _reenable(state, store, client)
        _push(state, store, client)
        state.counts = store.outcome_counts(state.started_at)
    for entity in ENTITIES:
        state.counts[entity]["failed"] += state.failed_extract[entity]
        state.counts[entity]["removed"] = 0
    if state.options.only:
        log.info("sync.removals_skipped", reason="--only syncs one object: nothing is inferred removed")
    else:
        state.report("removals", 0, None)
        _removals(state, store, client, approved)
    for entity in ENTITIES:
        state.counts[entity]["held"] = state.counts[entity].get("held", 0) + state.held[entity]
    _leave_settled_mark(state, store)


# --- settled runs --------------------------------------------------------------------------

# Part of every settled mark: a version of syncd whose diff, plan or removals differ must not trust
# a mark left by another (bump it when they change what a run does with the same stored inputs).
SETTLED_VERSION = "1"


def _settled_fingerprint(tenant: TenantConfig) -> str:
    """What a run's outcome depends on beside the stored inputs (store.settled's triggers watch
    those): the code and the tenant's settings that decide a diff. No secret is part of it."""
    from syncd import __version__

    settings = [SETTLED_VERSION, __version__, sorted(tenant.roles.items()), tenant.time_zone, repr(tenant.safety),
                tenant.deprovision, tenant.exams is not None, tenant.target.base_url, tenant.target.install_sid]
    return hashlib.blake2b(json.dumps(settings).encode(), digest_size=16).hexdigest()


def _may_settle(state: Run) -> bool:
    """Plain runs only: a dry run shows its plan, --force pushes everything, --only one object; and
    exams, whose window guard depends on the time, always take the diff."""
    options = state.options
    return not (options.dry_run or options.force or options.only) and state.tenant.exams is None


def _unchanged(state: Run, store: TenantStore) -> bool:
    """Nothing the diff reads has changed since a run that found nothing to do (syncd.store.settled),
    and this extract was read whole without an error: the diff would find nothing again, so it is
    not taken. The counts are the settled run's."""
    if not (_may_settle(state) and state.complete and not state.failure and not state.errors):
        return False
    unchanged = store.settled_counts(_settled_fingerprint(state.tenant))
    if unchanged is None:
        return False
    for entity in ENTITIES:
        state.counts[entity] = dict.fromkeys(COUNT_KEYS, 0) | {"unchanged": unchanged[entity]}
    log.info("sync.unchanged", reason="nothing read, acknowledged, held or deferred has changed since a run "
                                      "that found nothing to do: no diff taken")
    return True


def _leave_settled_mark(state: Run, store: TenantStore) -> None:
    """A complete run that found nothing to do leaves a settled mark for the next one (a delta run
    too: a hard delete it could not see changes the pages of the next full run, which drops the mark)."""
    if not (_may_settle(state) and state.complete and state.status == COMPLETED):
        return
    counts = state.counts
    if state.calls or state.planned_calls or any(n for e in ENTITIES for k, n in counts[e].items() if k != "unchanged"):
        return
    store.settle(state.run_id, _settled_fingerprint(state.tenant), {e: counts[e]["unchanged"] for e in ENTITIES})


def _extract(state: Run, store: TenantStore, source: Source,
             stage: Callable[[list[Any]], list[RecordError]] | None = None) -> None:
    stage = stage or store.stage
    try:
        read = 0
        guard = limits.ExtractGuard(state.tenant.source.max_pages)
        for page in source.extract():
            if http.stopping.is_set():
                state.failure = "stopped by a signal during the extract"
                return
            size = getattr(page, "size", len(page))  # a page skipped unparsed (store.pages) is empty
            read += size
            state.report("extract", read)
            _keep_passwords(state, page)
            staged = stage(page)
            for error in staged:
                if error.entity == "exam":
                    # An exam that cannot be mapped keeps its acknowledged state (see collect_removals);
                    # one without an id could be any exam: no exam is inferred removed.
                    state.exams_unnamed_error = state.exams_unnamed_error or not error.source_id
                elif not error.message.startswith("duplicate id"):
                    state.unreadable += 1
                _record_failed(state, store, RecordFailure(error.entity, error.source_id, "extract", error.message))
                state.failed_extract[error.entity] += 1
            guard.page(size, sum(e.message.startswith("duplicate id") for e in staged))
        state.complete = source.complete
        state.exams_complete = (state.complete and getattr(source, "exams_complete", True)
                                and not state.exams_unnamed_error)
        exams_error = getattr(source, "exams_error", None)
        if exams_error:
            log.error("sync.exams_unavailable", error=exams_error,
                      consequence="exams are not synced this run and none is inferred removed")
            _record_failed(state, store, RecordFailure("exam", "", "extract", exams_error))
    except DeltaRejected:
        raise  # syncd.delta makes a full extract instead
    except SyncError as exc:  # whatever its action: a partial extract infers nothing (completeness guard)
        state.failure = f"extract failed: {exc}"
        log.error("sync.extract_failed", error=str(exc), source_requests=source.requests)
    log.info("sync.extracted", complete=state.complete, source_requests=source.requests)


def _keep_passwords(state: Run, page: list[Any]) -> None:
    """Each exam's password, in memory for the requests of this run, and redacted from every log
    line (the first record read of an id wins, as in staging)."""
    fresh = []
    for record in page:
        if isinstance(record, Exam) and record.password and record.source_id not in state.passwords:
            state.passwords[record.source_id] = record.password
            fresh.append(record.password)
    if fresh:
        logs.register_secrets(fresh)


def _guard_completeness(state: Run, store: TenantStore) -> None:
    """An empty collection where the target holds acknowledged records is not a complete extract:
    a source that answers "200 OK" with nothing must never empty the roster."""
    if not state.complete:
        return
    staged = store.staged_counts()
    for entity, acked in store.acked_counts().items():
        if entity not in state.entities:
            continue
        if acked and not staged[entity] and entity == "exam":
            state.exams_complete = False  # no exam at all: keep the exams, sync the roster
            log.warning("sync.extract_suspect", entity=entity, acknowledged=acked,
                        reason=f"the source returned no exams at all, where {acked} were synced before: "
                               "no exam is inferred removed")
        elif acked and not staged[entity]:
            state.complete = False
            log.warning("sync.extract_suspect", entity=entity, acknowledged=acked,
                        reason=f"the source returned no {PLURAL[entity]} at all, where {acked} were synced before: "
                               "treated as incomplete, nothing is inferred removed")


def _update_breaker(state: Run, store: TenantStore, approved: str | None) -> None:
    """Too many updates at once (a source that rewrote every name?) are held for an admin."""
    tenant = state.tenant.name
    changes = store.change_counts()
    acked = store.acked_counts()
    approved_updates = store.held_counts(approved).get if approved else None
    for entity in ENTITIES:
        updates = changes[entity].get("update", 0)
        reason = safety.update_breaker(state.tenant.safety, updates, acked[entity])
        if not reason or state.options.force:
            continue
        if approved_updates and approved_updates(entity, {}).get("update"):
            log.info("sync.updates_approved", entity=entity, updates=updates, approved_run=approved)
            continue
        state.held[entity] += store.hold_updates(state.run_id, entity)
        state.breaker = True
        state.held_reasons.append(f"{PLURAL[entity]} updates held: {reason}")
        log.warning("sync.held", entity=entity, kind="update", count=updates, reason=reason,
                    approve=f"syncd approve {tenant} --run {state.run_id}")


def _window_guard(state: Run, store: TenantStore, approved: str | None) -> None:
    """An exam whose window has opened keeps its window and duration until an admin approves the
    change: students may have booked sessions against them (SPEC §7)."""
    now = datetime.now(UTC)
    for source_id, old, new in store.guarded_exam_updates():
        lines = exams.guarded_change(old, new, now)
        if not lines:
            continue
        if store.was_held(approved, "exam", "update", (source_id,)):
            log.info("sync.exam_change_approved", source_id=source_id, changes=lines, approved_run=approved)
            continue
        store.hold_exam_update(state.run_id, source_id)
        state.held["exam"] += 1
        state.breaker = True
        opened = old.get("configuration", {}).get("access", {}).get("open")
        reason = f"exam {source_id} held: its window opened at {opened} ({'; '.join(lines)})"
        state.held_reasons.append(reason)
        log.warning("sync.exam_held", source_id=source_id, title=new.get("title"), changes=lines, reason=reason,
                    approve=f"syncd approve {state.tenant.name} --run {state.run_id}")


def _defer_escrowed(state: Run, store: TenantStore) -> None:
    """Records the target keeps rejecting wait out their escrow delay instead of slowing every run."""
    for record in store.defer_escrowed():
        key = record["key"]
        entity: Entity = record["entity"]
        source_id = record["source_id"] or "/".join(key)
        name = SPECS[entity].label({entity: record["body"]})
        _record_failed(state, store, RecordFailure(
            entity, source_id, "push", record["message"], record["http_status"],
            course_id=key[0] if entity == "enrollment" else None, user_id=key[1] if entity == "enrollment" else None,
            name=name, attempts=record["attempts"], first_seen=record["first_seen"],
            next_retry_at=record["next_retry_at"]))


def _removals(state: Run, store: TenantStore, client: ProvisionClient, approved: str | None) -> None:
    """Tombstone what left scope, but only on a complete extract in which every record was readable,
    within the breaker's thresholds, and outside a freeze."""
    if not state.complete or state.failure:
        log.info("sync.removals_skipped", reason="the extract is incomplete: nothing is inferred removed")
        show_removals(state, store, removals=False)
        return
    if state.unreadable:
        log.warning("sync.removals_skipped", unreadable_records=state.unreadable,
                    reason="some source records could not be read; one of them may be an object that "
                           "only looks removed")
        show_removals(state, store, removals=False)
        return
    tenant, config = state.tenant.name, state.tenant.safety
    complete = tuple(e for e in state.entities if e != "exam" or state.exams_complete)
    if "exam" in state.entities and not state.exams_complete:
        log.info("sync.exam_removals_skipped", reason="the exams were not all read: no exam is inferred removed")
    pending = store.collect_removals(complete, state.run_id, state.among)
    window = safety.freeze(config, _today(state.tenant))
    if window and any(pending.values()) and not approved:
        held = store.hold_all_removals(state.run_id)
        for entity, count in held.items():
            state.held[entity] += count
        state.held_reasons.append(f"removals held: freeze from {window[0]} to {window[1]}")
        log.warning("sync.removals_frozen", held={PLURAL[e]: n for e, n in held.items()},
                    freeze=[str(window[0]), str(window[1])])
        return
    acked = store.acked_counts()
    for entity in ENTITIES:
        if not pending[entity]:
            continue
        unapproved = store.unapproved_removals(entity, approved)
        reason = safety.removal_breaker(config, unapproved, acked[entity])
        if reason:
            state.held[entity] += store.hold_removals(state.run_id, entity, approved)
            state.breaker = True
            state.held_reasons.append(f"{PLURAL[entity]} removals held: {reason}")
            log.warning("sync.held", entity=entity, kind="remove", count=unapproved, reason=reason,
                        approve=f"syncd approve {tenant} --run {state.run_id}")
    if state.options.dry_run:
        for entity, count in store.pending_removal_counts().items():
            state.counts[entity]["removed"] = count
        show_removals(state, store)
        return
    removed = store.apply_removals()
    for entity, count in removed.items():
        state.counts[entity]["removed"] = count
    if approved:
        store.spend_approval(approved, state.run_id)
        log.info("sync.approval_spent", approved_run=approved)
    if state.tenant.deprovision == "disable":
        _disable(state, store, client)
    if state.tenant.exams is not None and state.tenant.exams.on_removed == "delete":
        _delete_exams(state, store, client)


def _delete_exams(state: Run, store: TenantStore, client: ProvisionClient) -> None:
    """on_removed = "delete": an exam that left scope (past the breaker) is soft-deleted in the target."""
    for source_id, course_sid, exam_sid, title in store.exams_to_delete():
        try:
            client.delete_exam(course_sid, exam_sid, title or source_id)
        except SyncError as exc:  # the record fails alone, whatever the action (SPEC §5)
            _record_failed(state, store, RecordFailure("exam", source_id, "push", f"could not delete: {exc.detail}",
                                                       exc.status))
            continue
        store.set_exam_deleted(source_id)
        log.info("sync.exam_deleted", source_id=source_id, sid=exam_sid)


def _disable(state: Run, store: TenantStore, client: ProvisionClient) -> None:
    """deprovision = "disable": a user who left scope entirely can no longer sign in."""
    for source_id, sid in store.users_to_disable():
        try:
            client.set_enabled(sid, False)
        except SyncError as exc:  # the record fails alone, whatever the action (SPEC §5)
            _record_failed(state, store, RecordFailure("user", source_id, "push", f"could not disable: {exc.detail}",
                                                       exc.status))
            continue
        store.set_disabled(source_id, True)
        log.info("sync.user_disabled", source_id=source_id, sid=sid)


def _reenable(state: Run, store: TenantStore, client: ProvisionClient) -> None:
    """A disabled user whose source id is back in scope is enabled again (and then updated as usual)."""
    for source_id, sid in store.users_to_enable():
        try:
            client.set_enabled(sid, True)
        except SyncError as exc:  # the record fails alone, whatever the action (SPEC §5)
            _record_failed(state, store, RecordFailure("user", source_id, "push",
                                                       f"could not re-enable: {exc.detail}", exc.status))
            continue
        store.set_disabled(source_id, False)
        log.info("sync.user_enabled", source_id=source_id, sid=sid)


def _only(state: Run, store: TenantStore) -> int:
    """--only: keep the calls of one object; say what the source and the plan hold for it."""
    assert state.options.only is not None
    entity, source_id = state.options.only
    found = store.describe_object(entity, source_id)
    state.say(f"extract: {found}")
    kept = store.keep_calls_of(entity, source_id)
    state.say(f"plan: {kept} call(s) for {entity} {source_id}" + ("" if kept else " (it is up to date)"))
    return kept


# --- push ----------------------------------------------------------------------------------


def _push(state: Run, store: TenantStore, client: ProvisionClient) -> None:
    """Send the planned calls, at most ``concurrency`` in flight; acknowledge each as it returns.

    Only this thread writes to SQLite; workers only do HTTP. As many calls again wait queued
    (``window``), so a worker that is done takes the next call at once, while this thread
    acknowledges; each call reports its return on ``returned``.
    """
    tenant = state.tenant
    in_flight: dict[Future[Outcome], Call] = {}
    returned: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
    window = tenant.target.concurrency * 2
    # The push starts now: from here to sync.finished is the push's time (bench/run.py measures it).
    log.info("sync.planned", planned_calls=state.planned_calls)
    with ThreadPoolExecutor(tenant.target.concurrency, thread_name_prefix="push") as pool:
        try:
            for sent, call in enumerate(store.calls(with_sids=not state.options.force), 1):
                if http.stopping.is_set():
                    state.failure = state.failure or "stopped by a signal: the calls not yet sent wait for the next run"
                if state.failure:
                    break
                future = pool.submit(client.provision, call)
                in_flight[future] = call
                future.add_done_callback(returned.put)
                if len(in_flight) >= window:
                    _settle(state, store, in_flight, returned, FIRST_COMPLETED)
                    state.report("push", sent - len(in_flight), state.planned_calls)
        finally:
            # Whatever stopped us, every call already sent is waited for and acknowledged.
            _settle(state, store, in_flight, returned, ALL_COMPLETED)
            state.calls = client.requests
            state.report("push", state.calls, max(state.planned_calls, state.calls))


ACK_BATCH_S = 0.005  # a returned call waits at most this long for others to share its transaction


def _settle(state: Run, store: TenantStore, in_flight: dict[Future[Outcome], Call],
            returned: queue.SimpleQueue[Future[Outcome]], how: str) -> None:
    """Collect the calls that returned and acknowledge them together (one transaction).

    FIRST_COMPLETED: the first call to return, those that return within ``ACK_BATCH_S`` of it
    (until ``concurrency`` have), and any others already back: a transaction's fixed cost (BEGIN,
    COMMIT, a statement per table) is most of an acknowledgement's, and the workers do not wait on
    it (calls are queued). When acknowledging is the slower side (a fast target, many workers),
    the calls that returned meanwhile share the next transaction, so batches grow instead of a
    backlog. Each call is still acknowledged, committed, within milliseconds of its return.

    ALL_COMPLETED waits on the calls themselves, not on their reports: a Ctrl-C that lands after a
    report was taken off the queue and before its call was acknowledged must not leave the last
    settle waiting for that report forever."""
    if how == ALL_COMPLETED:
        wait(list(in_flight), return_when=ALL_COMPLETED)
        done = list(in_flight)
    else:
        done = [returned.get()]
        until = time.monotonic() + ACK_BATCH_S
        while len(done) < state.tenant.target.concurrency:
            remaining = until - time.monotonic()
            try:
                done.append(returned.get(timeout=remaining) if remaining > 0 else returned.get_nowait())
            except queue.Empty:
                break
        while True:  # and every call that returned meanwhile: batches grow when acknowledging lags
            try:
                done.append(returned.get_nowait())
            except queue.Empty:
                break
    done.sort(key=lambda future: in_flight[future].seq)  # in call order: a later acknowledgement wins
    acks: list[tuple[Call, Outcome]] = []
    answers: list[CallLog] = []  # for `syncd explain`: the last call of each object and its answer
    for future in done:
        call = in_flight.pop(future)
        try:
            acks.append((call, future.result()))
        except SyncError as exc:
            if errors.action(exc) in ("stop", "admin"):  # refused credentials: no later call can succeed
                state.failure = f"the target refused the token: {exc}"
                log.error("sync.target_auth_failed", error=str(exc))
                answers.append(CallLog(state.run_id, call, "failed", exc.status, state.failure))
                continue
            # retry (5xx, timeouts: pending) or record (4xx: escrow), decided by the status
            _call_failed(state, store, call, exc.detail, exc.status)
            rejected = exc.status is not None and 400 <= exc.status < 500 and exc.status != 429
            answers.append(CallLog(state.run_id, call, "rejected" if rejected else "failed", exc.status, exc.detail))
            if state.options.only:
                state.say(f"push: call {call.seq} ({call.describe()}) failed: HTTP {exc.status or '-'}: {exc.detail}")
    answers += [_answered(state.run_id, call, outcome) for call, outcome in acks]
    store.acknowledge(((call, outcome.sids) for call, outcome in acks), answers)
    for call, outcome in acks:
        if state.options.only:
            acked = ", ".join(f"{e} {sid}" for e, sid in outcome.sids.items())
            state.say(f"push: call {call.seq} ({call.describe()}) acknowledged: {acked}")
        for entity, problem in outcome.problems.items():
            _record_failed(state, store, RecordFailure(
                entity, call.source_id(entity), "push", f"not acknowledged: {problem}", course_id=call.course_id,
                user_id=call.user_id, name=call.name(entity)))


def _answered(run_id: str, call: Call, outcome: Outcome) -> CallLog:
    problems = {entity: f"not acknowledged: {problem}" for entity, problem in outcome.problems.items()}
    return CallLog(run_id, call, "acknowledged", 200, sids=outcome.sids, answers={**outcome.results, **problems},
                   outcomes=dict.fromkeys(problems, "not_acknowledged"))


def _call_failed(state: Run, store: TenantStore, call: Call, message: str, status: int | None) -> None:
    entity = call.innermost
    attempts = retry = None
    if status is None or status == 429 or status >= 500:
        message += " (will be retried on the next run)"
    elif 400 <= status < 500:
        # A rejection: the record waits in escrow (1 h, 6 h, 24 h, then daily) instead of being
        # sent again every run. Its user waits with it, as the user may be what was refused.
        # A course the target never acknowledged may be what it refuses: it waits too. A known
        # course does not: other calls carry it, and one refused student must not hold it back.
        # "Known" is asked of the store, not of the call: an earlier call of this very run may
        # have had the course acknowledged after this call was planned (SPEC §5).
        companions: list[Entity] = ["user"] if call.user_id and entity != "user" else []
        if entity != "course" and store.acked_body("course", (call.course_id,)) is None:
            companions.append("course")
        for companion in companions:
            store.escrow(state.run_id, companion, call.parts[companion].key, status, message)
        attempts, retry = store.escrow(state.run_id, entity, call.parts[entity].key, status,
                                       message)
    _record_failed(state, store, RecordFailure(
        entity, call.source_id(entity), "push", message, status, course_id=call.course_id, user_id=call.user_id,
        name=call.name(entity), attempts=attempts, next_retry_at=retry))


def _record_failed(state: Run, store: TenantStore, failure: RecordFailure) -> None:
    """One record failed alone: stored (for `syncd errors`), logged once, and the run goes on."""
    state.errors += 1
    # A server may echo a secret back: it is never stored or shown.
    failure = dataclasses.replace(failure, message=logs.redact(failure.message))
    if not limits.store_error_row(state.errors):
        if state.errors == limits.MAX_ERROR_ROWS + 1:
            log.warning("sync.error_rows_capped", stored=limits.MAX_ERROR_ROWS,
                        consequence="further failures of this run are counted but not stored")
        return
    attempts = store.record_error(state.run_id, failure)
    entity = failure.entity
    log.warning("sync.record_failed", entity=entity, source_id=failure.source_id, name=failure.name,
                stage=failure.stage, http_status=failure.http_status, message=failure.message, attempts=attempts,
                next_retry_at=failure.next_retry_at, course_id=failure.course_id if entity != "course" else None,
                user_id=failure.user_id if entity == "enrollment" else None)


# --- summary -------------------------------------------------------------------------------


def _finish(state: Run, store: TenantStore) -> dict[str, Any]:
    summary = state.summary()
    store.finish_run(state.run_id, state.status, summary,
                     logs.redact(state.failure or "; ".join(state.held_reasons) or None), state.complete)
    if state.failure and not state.options.dry_run:
        failures = store.failed_in_a_row()
        if failures == state.tenant.safety.degraded_after:
            # Loud once, when the tenant crosses the line; `syncd status` keeps showing it.
            log.error("tenant.degraded", failed_runs_in_a_row=failures, last_error=state.failure,
                      hint="the tenant is not syncing: check its credentials and the target")
    level = "error" if state.failure else ("warning" if state.errors else "info")
    getattr(log, level)("sync.finished", status=summary["status"], counts=summary["counts"],
                        calls=summary["calls"], duration_s=summary["duration_s"],
                        dry_run=state.options.dry_run, errors=state.errors, message=state.failure)
    return summary


def _planned_counts(store: TenantStore) -> dict[Entity, dict[str, int]]:
    changes = store.change_counts()
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


def _show_plan(state: Run, store: TenantStore, show: Show | None) -> None:
    """The dry-run plan as data: streamed item by item to ``show`` (the CLI renders each), or
    gathered in ``state.plan_data`` for ``--json``."""
    data: list[dict[str, Any]] = []
    if show:
        show({"plan_for": state.tenant.name, "calls": state.planned_calls})
    for call in store.calls(with_sids=not state.options.force):
        item = {"call": call.seq, "objects": [_change(store, entity, part.key, "/".join(part.key), part.body)
                                              for entity, part in call.parts.items()]}
        if show:
            show(item)
        else:
            data.append(item)
    state.plan_data = None if show else data


def show_removals(state: Run, store: TenantStore, removals: bool = True) -> None:
    """After a dry run's removal step: what would be removed (``removals``: the step ran), and what
    the breakers and the window guard would hold."""
    if not state.options.dry_run:
        return
    removed = [{"entity": e, "source_id": "/".join(k)} for e, k in store.pending_removals()] if removals else []
    held = [{"entity": e, "kind": kind, "source_id": "/".join(k)} for e, kind, k in store.held_keys(state.run_id)]
    if state.show:
        for removal in removed:
            state.show({"remove": removal})
        for hold in held:
            state.show({"hold": hold})
        for reason in state.held_reasons:
            state.show({"held": reason})
    elif state.plan_data is not None:
        state.removal_data = {"removals": removed, "held_objects": held}


def _change(store: TenantStore, entity: Entity, key: tuple[str, ...], label: str,
            body: dict[str, Any]) -> dict[str, Any]:
    """One object of a planned call: its action and, for an update, each field's old and new value."""
    old = store.acked_body(entity, key)
    new_fields = _flatten(body)
    if old is None:
        if entity == "exam":  # the stored digest is no one's business either
            new_fields = {k: "(secret)" if k.endswith(".password") else v for k, v in new_fields.items()}
        return {"entity": entity, "source_id": label, "action": "create", "fields": new_fields}
    old_fields = _flatten(old)
    fields = sorted(set(old_fields) | set(new_fields))
    changed: dict[str, Any] = {k: [old_fields.get(k), new_fields.get(k)] for k in fields
                               if old_fields.get(k) != new_fields.get(k)}
    if entity == "exam":
        changed = {k: "changed" if k.endswith(".password") else v for k, v in changed.items()}
    return {"entity": entity, "source_id": label, "action": "update" if changed else "carried", "changes": changed}


def _flatten(body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in body.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


__all__ = ["FAILED", "HELD", "Options", "RecordError", "run"]
