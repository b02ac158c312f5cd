"""`syncd explain`: why a student is (not) in the proctoring platform, in words and as data.

Each test syncs the sandbox with the real `syncd` command, then asks about one record whose fate
it arranged, and checks that the answer names the rule or the event that decided it.
"""

from __future__ import annotations

import json

from conftest import syncd

from syncd.sandbox.roster import ref


def explain(config, record: str, *extra: str):
    result = syncd(config, "explain", "lincoln", record, *extra)
    return result


def explained(config, record: str) -> dict:
    result = explain(config, record, "--json")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    return json.loads(result.stdout)


def _in_scope(roster, enrollment) -> bool:
    klass = roster.classes[enrollment["class"]["sourcedId"]]
    user = roster.users[enrollment["user"]["sourcedId"]]
    return klass["status"] == "active" and user["status"] == "active"


def _active_student_enrollments(roster) -> list[dict]:
    return [e for e in roster.enrollments.values() if e["status"] == "active" and "endDate" not in e
            and e["role"] == "student" and _in_scope(roster, e)]


def _pair(enrollment) -> str:
    return f"{enrollment['class']['sourcedId']}/{enrollment['user']['sourcedId']}"


def _sid(sandbox, kind: str, external: str) -> str:
    objects = getattr(sandbox.provision, kind)
    return next(sid for sid, body in objects.items() if body["ids"].get("external") == external)


def test_explain_names_the_scope_rule_that_kept_each_record_out(sandbox, config, roster):
    class_gone = list(roster.classes)[-1]
    roster.classes[class_gone]["status"] = "tobedeleted"
    inactive = next(u for u, v in roster.users.items() if v["status"] != "active")
    ended = next(e for e in roster.enrollments.values() if e.get("endDate") and e["status"] == "active"
                 and e["role"] in ("student", "teacher") and _in_scope(roster, e))
    unmapped = _active_student_enrollments(roster)[0]
    unmapped["role"] = "aide"
    student = _active_student_enrollments(roster)[1]["user"]["sourcedId"]
    roster.enrollments["enr-dangling"] = {**_active_student_enrollments(roster)[2], "sourcedId": "enr-dangling",
                                          "class": ref("class", "cls-missing"), "user": ref("user", student)}
    assert syncd(config, "sync", "lincoln").returncode == 1  # the dangling enrollment is a record error

    user = explained(config, f"user:{inactive}")
    assert user["state"] == "out_of_scope" and user["scope"]["rule"] == "inactive"
    assert user["extract"]["records"][0]["status"] == roster.users[inactive]["status"]
    text = explain(config, f"user:{inactive}").stdout
    assert f'marks the user "{roster.users[inactive]["status"]}"' in text

    over = explained(config, f"enrollment:{_pair(ended)}")
    assert over["scope"]["rule"] == "ended" and over["body"] is None
    assert ended["endDate"] in over["verdict"] and over["extract"]["records"][0]["end_date"] == ended["endDate"]

    role = explained(config, f"enrollment:{_pair(unmapped)}")
    assert role["scope"]["rule"] == "role_not_mapped" and '"aide"' in role["verdict"]

    dangling = explained(config, f"enrollment:cls-missing/{student}")
    assert dangling["scope"]["rule"] == "dangling_reference" and "cls-missing" in dangling["verdict"]

    # A class that is out of scope keeps its enrollments out too, and explain says which class.
    member = next(e for e in roster.enrollments.values() if e["class"]["sourcedId"] == class_gone
                  and e["status"] == "active" and "endDate" not in e and e["role"] in ("student", "teacher")
                  and roster.users[e["user"]["sourcedId"]]["status"] == "active")
    klass = explained(config, f"enrollment:{_pair(member)}")
    assert klass["scope"]["rule"] == "class_out_of_scope" and class_gone in klass["verdict"]
    assert explained(config, f"course:{class_gone}")["scope"]["rule"] == "inactive"


def test_explain_a_synced_student_gives_sid_body_and_the_call_that_carried_it(sandbox, config, roster):
    enrollment = _active_student_enrollments(roster)[0]
    user_id = enrollment["user"]["sourcedId"]
    result = syncd(config, "sync", "lincoln", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = json.loads(result.stdout)["run_id"]

    user = explained(config, f"user:{user_id}")
    assert user["state"] == "synced" and user["found"] is True
    assert user["target"]["sid"] == _sid(sandbox, "users", user_id)
    assert user["body"]["firstName"] == roster.users[user_id]["givenName"]
    assert user["name"] == f"{roster.users[user_id]['givenName']} {roster.users[user_id]['familyName']}"
    call = user["target"]["last_call"]
    assert call["run_id"] == run_id and call["outcome"] == "acknowledged" and call["sid"] == user["target"]["sid"]
    assert call["answer"] in ("Created", "Found Existing", "Updated") and "user" in call["carried"]
    assert [e["event"] for e in user["events"]][:2] == ["extract", "call"]

    pair = explained(config, f"enrollment:{_pair(enrollment)}")
    assert pair["state"] == "synced" and pair["body"] == {"role": "learner"}
    text = explain(config, f"enrollment:{_pair(enrollment)}").stdout
    assert "synced: in scope, and the target acknowledged it" in text and "what happened, in order:" in text


def test_explain_a_student_the_target_refuses_shows_the_escrow(sandbox, config, roster):
    refused = _active_student_enrollments(roster)[0]["user"]["sourcedId"]
    sandbox.provision.reject = lambda body: (
        (422, "email already taken") if body.get("user", {}).get("ids", {}).get("external") == refused else None)
    assert syncd(config, "sync", "lincoln").returncode == 1

    report = explained(config, f"user:{refused}")
    assert report["state"] == "escrow" and report["scope"]["in_scope"] is True
    assert report["escrow"]["http_status"] == 422 and report["escrow"]["next_retry_at"]
    assert "escrow" in report["verdict"] and "email already taken" in report["verdict"]
    assert report["target"]["sid"] is None
    assert report["target"]["last_call"]["outcome"] == "rejected"
    assert report["target"]["last_call"]["http_status"] == 422
    events = [e["event"] for e in report["events"]]
    assert {"extract", "call", "error", "escrow"} <= set(events)
    assert events.index("extract") < events.index("error") < events.index("escrow")
    assert any(e["message"] == "email already taken" for e in report["errors"])


def test_explain_a_student_whose_rename_the_update_breaker_held(sandbox, config, roster):
    assert syncd(config, "sync", "lincoln").returncode == 0
    for user in roster.users.values():
        user["familyName"] = user["familyName"].upper()
    held = syncd(config, "sync", "lincoln", "--json")
    assert held.returncode == 3
    run_id = json.loads(held.stdout)["run_id"]
    student = _active_student_enrollments(roster)[0]["user"]["sourcedId"]

    report = explained(config, f"user:{student}")
    assert report["state"] == "held"
    assert report["held"][0]["run_id"] == run_id and report["held"][0]["kind"] == "update"
    assert f"syncd approve lincoln --run {run_id}" in report["verdict"]
    # The source's new name is in the extract; the target keeps the old one until approved.
    assert report["extract"]["records"][0]["last_name"] == roster.users[student]["familyName"]
    assert report["target"]["acked_body"]["lastName"] != roster.users[student]["familyName"]
    assert report["held_changes"]["lastName"][1] == roster.users[student]["familyName"]
    assert "held" in [e["event"] for e in report["events"]]


def test_explain_a_dropped_enrollment_shows_its_tombstone(sandbox, config, roster):
    assert syncd(config, "sync", "lincoln").returncode == 0
    dropped = _active_student_enrollments(roster)[0]
    dropped["status"] = "tobedeleted"
    assert syncd(config, "sync", "lincoln").returncode == 0

    report = explained(config, f"enrollment:{_pair(dropped)}")
    assert report["state"] == "removed" and report["target"]["removed_at"]
    assert report["scope"]["rule"] == "inactive" and "tobedeleted" in report["verdict"]
    assert report["target"]["sid"] and report["target"]["last_call"]["outcome"] == "acknowledged"
    events = [e["event"] for e in report["events"]]
    assert events[-1] == "tombstone" and events.index("call") < events.index("tombstone")
    assert "tombstoned" in explain(config, f"enrollment:{_pair(dropped)}").stdout


def test_explain_an_unknown_id_says_so_and_suggests_the_closest(sandbox, config, roster):
    assert syncd(config, "sync", "lincoln").returncode == 0
    result = explain(config, "user:usr-00001")
    assert result.returncode == 1
    assert "has no user usr-00001" in result.stdout and "closest matches" in result.stdout
    data = json.loads(explain(config, "user:usr-00001", "--json").stdout)
    assert data["found"] is False and data["state"] == "unknown"
    assert "usr-000010" in [s["id"] for s in data["suggestions"]]

    person = next(u for u in roster.users.values() if u["status"] == "active")
    by_name = json.loads(explain(config, f"user:{person['givenName']} {person['familyName']}".lower(),
                                 "--json").stdout)
    assert {"id": person["sourcedId"], "matched_by": "name"}.items() <= next(
        s for s in by_name["suggestions"] if s["id"] == person["sourcedId"]).items()

    course = json.loads(explain(config, "course:cls-0001", "--json").stdout)
    assert any(s["id"].startswith("cls-0001") for s in course["suggestions"])


def test_explain_exams_unknown_tenant_and_bad_records(sandbox, config):
    exam = explain(config, "exam:1234")
    assert exam.returncode == 1 and "exams are not configured for tenant lincoln" in exam.stdout
    data = json.loads(explain(config, "exam:1234", "--json").stdout)
    assert data["entity"] == "exam" and data["found"] is False and data["rule"] == "exams_not_configured"

    unknown = syncd(config, "explain", "lincon", "user:x")
    assert unknown.returncode == 2 and "unknown tenant: lincon (did you mean lincoln?)" in unknown.stderr
    for bad in ("usr-1", "student:usr-1", "enrollment:cls-1", "user:"):
        result = explain(config, bad)
        assert result.returncode == 2 and ("expected user:ID" in result.stderr or "CLASS_ID/USER_ID" in result.stderr)


def test_explain_json_has_the_same_answer_as_data(sandbox, config, roster):
    assert syncd(config, "sync", "lincoln").returncode == 0
    user = next(u for u, v in roster.users.items() if v["status"] == "active" and v["role"] == "student")
    data = explained(config, f"user:{user}")
    assert {"tenant", "entity", "id", "found", "name", "state", "verdict", "last_run", "extract", "scope", "body",
            "target", "errors", "escrow", "held", "pending_removal", "events"} <= set(data)
    assert {"in_scope", "rule", "rules"} <= set(data["scope"])
    assert {"sid", "acked_at", "removed_at", "acked_body", "last_call"} <= set(data["target"])
    assert all({"at", "event", "text"} == set(e) for e in data["events"])
    assert data["state"] in ("synced", "pending", "escrow", "held", "removed", "out_of_scope", "not_in_source")
    text = explain(config, f"user:{user}").stdout
    assert data["verdict"] in text and all(e["text"] in text for e in data["events"])


def test_explain_on_canvas_finds_a_student_by_their_sis_id(tmp_path):
    from syncd.sandbox import CanvasRoster, CanvasSandbox

    roster = CanvasRoster.generate(seed=3, users=40, courses=4, enrollments=120)
    with CanvasSandbox(roster) as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
        assert syncd(config, "sync", "stateu").returncode == 0
        user_id, user = next((str(u), v) for u, v in roster.users.items() if v.get("sis_user_id")
                             and v["sis_user_id"] in {b["ids"].get("external") for b in box.provision.users.values()})
        result = syncd(config, "explain", "stateu", f"user:{user['sis_user_id']}", "--json")
        assert result.returncode == 1
        first = json.loads(result.stdout)["suggestions"][0]
        assert first["id"] == user_id and first["matched_by"] == "external id"
        found = json.loads(syncd(config, "explain", "stateu", f"user:{user_id}", "--json").stdout)
        assert found["state"] == "synced" and found["body"]["ids"] == {"external": user["sis_user_id"], "lms": user_id}
