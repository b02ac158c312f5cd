"""The script a district would write: the naive peer that bench/run.py measures syncd against.

Sequential `requests` with OAuth 1.0a, every collection read whole into dicts, the provision
bodies built in Python (SPEC §4, as a careful admin would), a diff against a JSON file of what the
last run pushed, one provision call per object that differs, the JSON file written back. It is
written plainly and correctly, without syncd's guards (no retry, no breaker, no escrow, no
completeness check), and without deliberate slowness: it is the peer syncd must beat.

    python bench/naive.py CONFIG STATE.json [--record-only]

CONFIG is a syncd TOML file (its first tenant's source and target); ``--record-only`` writes the
state without pushing (to start the peer on a target that syncd already filled).
"""

from __future__ import annotations

import json
import sys
import tomllib
from datetime import date
from pathlib import Path

import requests
from requests_oauthlib import OAuth1


def fetch_all(session: requests.Session, base: str, collection: str, auth: OAuth1, limit: int) -> list[dict]:
    records: list[dict] = []
    offset = 0
    while True:
        response = session.get(f"{base}/{collection}", params={"limit": limit, "offset": offset},
                               auth=auth, timeout=60)
        response.raise_for_status()
        page = response.json()[collection]
        records += page
        if len(page) < limit:
            return records
        offset += len(page)


def build(source: dict, roles: dict[str, str]) -> dict[str, dict[str, dict]]:
    session = requests.Session()
    auth = OAuth1(source["client_id"], client_secret=source["client_secret"], signature_method="HMAC-SHA256")
    limit = int(source.get("page_size", 1000))
    base = source["base_url"].rstrip("/")
    courses = {c["sourcedId"]: c for c in fetch_all(session, base, "courses", auth, limit)}
    classes = {c["sourcedId"]: c for c in fetch_all(session, base, "classes", auth, limit)}
    users = {u["sourcedId"]: u for u in fetch_all(session, base, "users", auth, limit)}
    enrollments = fetch_all(session, base, "enrollments", auth, limit)
    today = date.today().isoformat()  # noqa: DTZ011

    out: dict[str, dict[str, dict]] = {"courses": {}, "users": {}, "enrollments": {}}
    for class_id, klass in classes.items():
        if klass.get("status", "active") != "active":
            continue
        code = klass.get("classCode") or (courses.get((klass.get("course") or {}).get("sourcedId")) or {}).get(
            "courseCode")
        out["courses"][class_id] = {"ids": {"external": class_id}, "title": klass["title"],
                                    **({"code": code} if code else {})}
    for enrollment in enrollments:
        class_id, user_id = enrollment["class"]["sourcedId"], enrollment["user"]["sourcedId"]
        user = users.get(user_id)
        if (enrollment.get("status", "active") != "active" or (enrollment.get("endDate") or "9999")[:10] <= today
                or enrollment["role"] not in roles or class_id not in out["courses"]
                or not user or user.get("status", "active") != "active"):
            continue
        key = f"{class_id}/{user_id}"
        if key not in out["enrollments"]:
            out["enrollments"][key] = {"role": roles[enrollment["role"]]}
        if user_id not in out["users"]:
            out["users"][user_id] = {"ids": {"external": user_id}, "firstName": user["givenName"],
                                     "lastName": user["familyName"], **({"email": user["email"]} if user.get("email")
                                                                        else {})}
    return out


def push(target: dict, desired: dict, last: dict) -> int:
    session = requests.Session()
    url = f"{target['base_url'].rstrip('/')}/v2/installs/{target['install_sid']}/provision"
    headers = {"token": target["token"]}
    calls = 0
    course_of = {key.split("/")[1]: key.split("/")[0] for key in desired["enrollments"]}
    for class_id, body in desired["courses"].items():
        if last["courses"].get(class_id) != body:
            session.post(url, json={"course": body}, headers=headers, timeout=30).raise_for_status()
            calls += 1
    for user_id, body in desired["users"].items():
        if last["users"].get(user_id) != body:
            # The API needs a course with a user: use one of the user's courses.
            session.post(url, json={"course": desired["courses"][course_of[user_id]], "user": body}, headers=headers,
                         timeout=30).raise_for_status()
            calls += 1
    for key, body in desired["enrollments"].items():
        if last["enrollments"].get(key) != body:
            class_id, user_id = key.split("/")
            session.post(url, json={"course": desired["courses"][class_id], "user": desired["users"][user_id],
                                    "enrollment": body}, headers=headers, timeout=30).raise_for_status()
            calls += 1
    return calls


def main() -> None:
    config = tomllib.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    state = Path(sys.argv[2])
    tenant = next(iter(config["tenants"].values()))
    desired = build(tenant["source"], tenant.get("roles", {"student": "learner", "teacher": "instructor"}))
    last = json.loads(state.read_text()) if state.exists() else {"courses": {}, "users": {}, "enrollments": {}}
    calls = 0 if "--record-only" in sys.argv else push(tenant["target"], desired, last)
    state.write_text(json.dumps(desired))
    print(json.dumps({"calls": calls, "courses": len(desired["courses"]), "users": len(desired["users"]),
                      "enrollments": len(desired["enrollments"])}))


if __name__ == "__main__":
    main()
