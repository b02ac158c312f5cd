"""SmarterProctoring provision client: payloads from planned calls, results parsed.

``POST {base_url}/v2/installs/{installSid}/provision`` with the API key in the ``token`` header
(not a Bearer token). The call is an upsert keyed by the ids we send, so an at-least-once retry
never makes a duplicate.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import structlog

from syncd import http
from syncd.config import TargetConfig
from syncd.entities import KNOWN_RESULTS, SPECS, Call, Entity
from syncd.store.exams import with_password

log = structlog.get_logger("syncd.target")

@dataclass
class Outcome:
    """What the target acknowledged for one call (entity -> sid) and what it did not."""

    sids: dict[str, str] = field(default_factory=dict)  # entity -> sid, and "configuration" for an exam
    problems: dict[Entity, str] = field(default_factory=dict)
    results: dict[Entity, str] = field(default_factory=dict)  # the target's word: Created, Updated, …


class InvalidResponse(http.HttpError):
    """A 2xx answer that acknowledges nothing we can trust (not JSON, no object)."""


class ProvisionClient:
    def __init__(self, config: TargetConfig, session: requests.Session | None = None):
        self.config = config
        self.session = session or http.new_session(pool_size=config.concurrency)
        install = urllib.parse.quote(config.install_sid, safe="")
        self.url = f"{config.base_url}/v2/installs/{install}/provision"
        self._lock = threading.Lock()
        self.requests = 0
        # Exam source id -> clear password, for this run only (filled by the engine while staging):
        # the store keeps a keyed digest, the request needs the password itself.
        self.passwords: dict[str, str] = {}

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def set_enabled(self, user_sid: str, enabled: bool) -> None:
        """``PUT /v1/installs/{installSid}/users/{userSid}`` with ``enabled``: the API has no delete,
        so a user who left scope entirely can only be kept from signing in."""
        install = urllib.parse.quote(self.config.install_sid, safe="")
        url = f"{self.config.base_url}/v1/installs/{install}/users/{urllib.parse.quote(user_sid, safe='')}"
        http.send(self.session, "PUT", url, timeout=self.config.timeout_s, json={"enabled": enabled},
                  headers={"token": self.config.token, "Accept": "application/json"}, on_attempt=self._count)

    def delete_exam(self, course_sid: str, exam_sid: str, title: str) -> None:
        """``PUT /v1/installs/{i}/courses/{courseSid}/exams/{examSid}`` with status ``deleted``: the
        PUT replaces the exam, so it carries the title it was acknowledged with (on_removed = "delete")."""
        quote = urllib.parse.quote
        url = (f"{self.config.base_url}/v1/installs/{quote(self.config.install_sid, safe='')}/courses/"
               f"{quote(course_sid, safe='')}/exams/{quote(exam_sid, safe='')}")
        http.send(self.session, "PUT", url, timeout=self.config.timeout_s, json={"title": title, "status": "deleted"},
                  headers={"token": self.config.token, "Accept": "application/json"}, on_attempt=self._count)

    def provision(self, call: Call) -> Outcome:
        response = http.send(
            self.session, "POST", self.url, timeout=self.config.timeout_s, json=payload(call, self.passwords),
            headers={"token": self.config.token, "Accept": "application/json"},
            on_attempt=self._count,
        )
        return parse(response, call)


def payload(call: Call, passwords: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The request body: each part's mapped fields in its slot, plus ``ids.sid`` where the target
    gave us one; an exam's stored password digest is replaced by the password itself."""
    body = {SPECS[entity].slot: _with_sid(part.body, part.sid) for entity, part in call.parts.items()}
    exam = call.parts.get("exam")
    if exam is not None:
        password = (passwords or {}).get(exam.key[0])
        if password is None:  # staged this run, so known: a planner bug must not send a digest
            raise ValueError(f"no password in memory for exam {exam.key[0]}")
        body["exam"] = with_password(body["exam"], password)
    return body


def _with_sid(body: dict[str, Any], sid: str | None) -> dict[str, Any]:
    if not sid:
        return body
    return {**body, "ids": {**body.get("ids", {}), "sid": sid}}


def parse(response: requests.Response, call: Call) -> Outcome:
    try:
        data = response.json()
    except ValueError:
        raise InvalidResponse(f"provision answered HTTP {response.status_code} with a body that is not JSON",
                              response.status_code) from None
    if not isinstance(data, dict):
        raise InvalidResponse("provision answered with JSON that is not an object", response.status_code)
    outcome = Outcome()
    for entity in call.parts:
        spec = SPECS[entity]
        try:
            answer = spec.parse(entity, data.get(spec.slot))
        except ValueError as exc:
            outcome.problems[entity] = str(exc)
            continue
        outcome.sids[entity] = answer.sid
        if answer.result is not None:
            outcome.results[entity] = answer.result
    configuration = data.get("configuration")
    if "exam" in outcome.sids and isinstance(configuration, dict) and isinstance(configuration.get("sid"), str):
        outcome.sids["configuration"] = configuration["sid"]
    return outcome


__all__ = ["KNOWN_RESULTS", "InvalidResponse", "Outcome", "ProvisionClient", "parse", "payload"]
