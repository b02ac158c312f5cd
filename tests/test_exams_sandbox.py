"""The exam fakes behave as reference/exams.md §6 says, and syncd's exam readers agree with the
independently written expected mappings over real HTTP on loopback."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from syncd import config as configuration
from syncd import exams, http
from syncd.exams import CourseWindow, Exam
from syncd.sandbox import CanvasFault, CanvasRoster, CanvasSandbox, Fault, Roster, Sandbox
from syncd.sandbox import oneroster_lineitems as lineitems
from syncd.sandbox.canvas import SCOPES as FAKE_SCOPES
from syncd.sandbox.canvas_quizzes import CanvasQuizzes, expected_exams, expected_override_counts
from syncd.sandbox.provision_exams import EXAM_SID, snapshot
from syncd.sources import SourceError
from syncd.sources.canvas import CanvasSource
from syncd.sources.canvas_auth import SCOPES as ROSTER_SCOPES
from syncd.sources.canvas_exams import CanvasReader, course_exams, scopes
from syncd.sources.oneroster import OneRosterSource
from syncd.sources.oneroster_exams import GRADEBOOK_SCOPE, GradebookUnavailable, getter, line_items, token_scope

TS = "TS4b894875a1b24f4e9b2e1c9d0f8a7b6c"
IN_SCOPE = ("available", "unpublished")


@pytest.fixture
def canvas_roster() -> CanvasRoster:
    return CanvasRoster.generate(seed=5, users=80, courses=18, enrollments=300)


@pytest.fixture
def book(canvas_roster) -> CanvasQuizzes:
    return CanvasQuizzes.generate(canvas_roster.courses, seed=5, per_course=5)


def tenant_of(box, tmp_path: Path, exams_table: str, **options) -> configuration.TenantConfig:
    text = f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n' + box.tenant_toml(**options)
    text += f'[tenants.{box.default_tenant}.exams]\nproctor_types = {{ "{TS}" = {{}} }}\n{exams_table}'
    return configuration.parse(tomllib.loads(text), tmp_path / "syncd.toml").tenants[box.default_tenant]


def read_canvas(box: CanvasSandbox, tenant, roster: CanvasRoster, state: Path, count_overrides: bool = False):
    """Every course in scope through syncd's readers: (published bodies by external id, all exams, errors)."""
    source = CanvasSource(tenant, state)
    reader = CanvasReader.of(source)
    bodies, mapped, failed = {}, {}, set()
    for course_id, course in roster.courses.items():
        if course["workflow_state"] not in IN_SCOPE:
            continue
        window = CourseWindow(course.get("start_at"), course.get("end_at"))
        for page in course_exams(reader, str(course_id), window, tenant.exams, count_overrides=count_overrides):
            for record in page:
                if isinstance(record, Exam):
                    mapped[record.source_id] = record
                    if record.published:
                        body = exams.exam_body(record, tenant.exams)
                        bodies[body.pop("ids")["external"]] = body
                else:
                    failed.add(record.source_id)
    return bodies, mapped, failed, source


# --- Canvas ---------------------------------------------------------------------------------


def test_canvas_exams_read_through_syncd_equal_the_expected_mapping(canvas_roster, book, tmp_path):
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        tenant = tenant_of(box, tmp_path, "")
        bodies, mapped, failed, _ = read_canvas(box, tenant, canvas_roster, tmp_path, count_overrides=True)
        expected, expected_failed = expected_exams(book, canvas_roster.courses, box.source_url,
                                                   proctor_types={TS: {}})
    assert bodies == expected and failed == expected_failed
    assert len(bodies) > 20 and len(failed) >= 3
    counts = expected_override_counts(book)
    assert {s: e.override_count for s, e in mapped.items() if e.published} == \
        {s: counts[s] for s, e in mapped.items() if e.published}
    assert any(e.override_count for e in mapped.values())
    # Classic quizzes, New Quizzes, practice, unlimited attempts, next-day UTC closes are all seeded.
    assert {k.split(":")[0] for k in bodies} == {"quiz", "assignment"}
    assert any(b["practice"] for b in bodies.values())
    assert any("attempts" not in b["configuration"] for b in bodies.values())


def test_select_all_with_defaults_provisions_every_published_quiz(canvas_roster, book, tmp_path):
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        tenant = tenant_of(box, tmp_path, 'select = "all"\ndefault_duration_min = 45\ndefault_password = "dflt"\n'
                                          "limited_scope = true\n")
        bodies, _, failed, _ = read_canvas(box, tenant, canvas_roster, tmp_path)
        expected, expected_failed = expected_exams(book, canvas_roster.courses, box.source_url, select="all",
                                                   duration=45, password="dflt", proctor_types={TS: {}},
                                                   limited_scope=True)
    assert bodies == expected and failed == expected_failed
    assert any(b["configuration"]["password"] == "dflt" for b in bodies.values())
    assert any(b["configuration"]["duration"] == 45 for b in bodies.values())


def test_without_new_quizzes_only_classic_quizzes_are_read(canvas_roster, book, tmp_path):
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        tenant = tenant_of(box, tmp_path, "new_quizzes = false\n")
        before = box.canvas.requests
        bodies, _, _, _ = read_canvas(box, tenant, canvas_roster, tmp_path)
        courses = sum(1 for c in canvas_roster.courses.values() if c["workflow_state"] in IN_SCOPE)
        assert box.canvas.requests - before == courses  # one quiz list per course, nothing else
    assert bodies and all(k.startswith("quiz:") for k in bodies)


def test_new_quizzes_without_the_quiz_api_take_the_tenant_defaults(canvas_roster, book, tmp_path):
    defaults = 'select = "all"\ndefault_duration_min = 45\ndefault_password = "dflt"\n'
    with CanvasSandbox(canvas_roster, quizzes=book, faults=[CanvasFault(r"^/api/quiz/v1/", 404)]) as box:
        tenant = tenant_of(box, tmp_path, defaults)
        bodies, _, _, _ = read_canvas(box, tenant, canvas_roster, tmp_path)
    new = {k: b for k, b in bodies.items() if k.startswith("assignment:")}
    assert new and all(b["configuration"]["duration"] == 45 and b["configuration"]["password"] == "dflt"
                       for b in new.values())
    # A New Quiz missing from the quiz API's list is asked for by id; gone there too, it takes the defaults.
    missing = next(a for a in book.new_quizzes if book.assignments[a]["published"])
    del book.new_quizzes[missing]
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        tenant = tenant_of(box, tmp_path, defaults)
        bodies, _, _, _ = read_canvas(box, tenant, canvas_roster, tmp_path / "again")
    assert bodies[f"assignment:{missing}"]["configuration"]["duration"] == 45


def test_a_token_that_cannot_manage_sees_no_access_code_and_those_exams_fail(canvas_roster, book, tmp_path):
    book.token_can_manage = False
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        tenant = tenant_of(box, tmp_path, "new_quizzes = false\n")
        bodies, _, failed, _ = read_canvas(box, tenant, canvas_roster, tmp_path)
        expected, expected_failed = expected_exams(book, canvas_roster.courses, box.source_url, new_quizzes=False,
                                                   proctor_types={TS: {}})
    assert bodies == expected == {} and failed == expected_failed and failed


def test_mutations_between_runs_show_in_the_next_read(canvas_roster, book, tmp_path):
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        tenant = tenant_of(box, tmp_path, "")
        before, _, _, _ = read_canvas(box, tenant, canvas_roster, tmp_path)
        quizzes = [int(k.split(":")[1]) for k in before if k.startswith("quiz:")]
        renamed = book.rename(quizzes[0])
        shifted = book.shift_window(quizzes[1], hours=24)
        limited = book.change_limit(quizzes[2], 120)
        hidden = book.unpublish(quizzes[3])
        gone = book.delete(quizzes[4])
        old, new = book.to_new_quiz(quizzes[5])
        after, _, _, _ = read_canvas(box, tenant, canvas_roster, tmp_path)
        expected, _ = expected_exams(book, canvas_roster.courses, box.source_url, proctor_types={TS: {}})
        anonymous = requests.get(f"{box.source_url}/api/v1/courses/{book.quizzes[quizzes[0]]['course_id']}/quizzes",
                                 timeout=5)
    assert after == expected
    assert after[renamed]["title"].endswith("(rev 1)")
    assert after[shifted]["configuration"]["access"] != before[shifted]["configuration"]["access"]
    assert after[limited]["configuration"]["duration"] == 120
    assert hidden not in after and gone not in after and old not in after and new in after
    assert anonymous.status_code == 401  # no token: nothing leaks


def raw(box: CanvasSandbox, path: str, **params) -> requests.Response:
    token = box.canvas.issue_access_token()
    return requests.get(box.source_url + path, params=params, headers={"Authorization": f"Bearer {token}"},
                        timeout=10)


def test_the_fake_canvas_has_the_quirks_of_exams_md(canvas_roster, book):
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        disabled = next(iter(book.tab_disabled))
        assert raw(box, f"/api/v1/courses/{disabled}/quizzes").json() == {
            "message": "That page has been disabled for this course"}
        quiz = next(q for q in book.quizzes.values() if book.overrides.get(q["assignment_id"]))
        listed = {q["id"]: q for q in raw(box, f"/api/v1/courses/{quiz['course_id']}/quizzes", per_page=50).json()}
        shown = listed[quiz["id"]]
        assert "updated_at" not in shown and shown["all_dates"][0]["base"] is True
        assert shown["all_dates"][0]["unlock_at"] == quiz["unlock_at"]
        assert shown["unlock_at"] != quiz["unlock_at"]  # an admin sees the override's dates at the top level
        stamps = [q["unlock_at"] for q in book.quizzes.values()]
        assert any(s.endswith("Z") for s in stamps) and any(s.endswith("-06:00") for s in stamps)
        assert any(q["time_limit"] is None for q in book.quizzes.values())
        assert any(q["allowed_attempts"] == -1 for q in book.quizzes.values())
        assert any(q["lock_at"] is None for q in book.quizzes.values())
        assert any(not q["published"] for q in book.quizzes.values())
        # A local 23:59 close, in both spellings: next-day 05:59:59Z, or 23:59:59-06:00.
        closes = [q["lock_at"] or "" for q in book.quizzes.values()]
        assert any(c.endswith("T05:59:59Z") for c in closes) and any(c.endswith("T23:59:59-06:00") for c in closes)
        # Deleted: absent from the list, 404 by id.
        book.delete(quiz["id"])
        assert quiz["id"] not in {q["id"] for q in raw(box, f"/api/v1/courses/{quiz['course_id']}/quizzes",
                                                       per_page=50).json()}
        assert raw(box, f"/api/v1/courses/{quiz['course_id']}/quizzes/{quiz['id']}").status_code == 404
        # Submissions come wrapped, with settings_only extension rows.
        extended = next(iter(book.submissions))
        course = book.quizzes[extended]["course_id"]
        rows = raw(box, f"/api/v1/courses/{course}/quizzes/{extended}/submissions").json()["quiz_submissions"]
        assert rows[0]["workflow_state"] == "settings_only" and rows[0]["extra_time"] > 0
        overrides = raw(box, f"/api/v1/courses/{course}/quizzes/assignment_overrides").json()
        assert "quiz_assignment_overrides" in overrides


def test_the_fake_assignments_and_quiz_api_have_their_quirks(canvas_roster, book):
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        aid = next(a for a in book.new_quizzes if book.overrides.get(a))
        assignment = book.assignments[aid]
        course = assignment["course_id"]
        rows = {a["id"]: a for a in raw(box, f"/api/v1/courses/{course}/assignments", per_page=50).json()}
        assert all("is_quiz_lti_assignment" not in a for a in rows.values() if a["id"] not in book.new_quizzes)
        assert rows[aid]["is_quiz_lti_assignment"] is True and rows[aid]["submission_types"] == ["external_tool"]
        # Default: the admin caller sees the ad-hoc override's dates; false gives the base dates.
        assert rows[aid]["unlock_at"] != assignment["unlock_at"]
        base = {a["id"]: a for a in raw(box, f"/api/v1/courses/{course}/assignments", per_page=50,
                                        override_assignment_dates="false").json()}
        assert base[aid]["unlock_at"] == assignment["unlock_at"]
        only = raw(box, f"/api/v1/courses/{course}/assignments", new_quizzes="true", per_page=50).json()
        assert {a["id"] for a in only} == {a for a in book.new_quizzes if book.assignments[a]["course_id"] == course}
        # 25 overrides: all_dates_count instead of all_dates.
        for i in range(25):
            book.add_override(aid, [20_000 + i], days=1, assignment=True)
        many = {a["id"]: a for a in raw(box, f"/api/v1/courses/{course}/assignments", per_page=50,
                                        **{"include[]": "all_dates"}).json()}
        assert "all_dates" not in many[aid] and many[aid]["all_dates_count"] == 27
        # The quiz API: its own base path and Link paging, string ids, seconds, some settings null.
        first = raw(box, f"/api/quiz/v1/courses/{course}/quizzes", per_page=1)
        assert isinstance(first.json()[0]["id"], str)
        assert "/api/quiz/v1/courses/" in first.links["next"]["url"]
        one = raw(box, f"/api/quiz/v1/courses/{course}/quizzes/{aid}").json()
        assert one["quiz_settings"] is None or one["quiz_settings"]["session_time_limit_in_seconds"] % 60 in (0, 30)
        assert any(q["quiz_settings"] is None for q in book.new_quizzes.values())
        assert raw(box, f"/api/quiz/v1/courses/{course}/quizzes/1").status_code == 404


def test_the_exam_scopes_are_exactly_what_the_readers_need(canvas_roster, book, tmp_path):
    with CanvasSandbox(canvas_roster, quizzes=book, enforce_scopes=True) as box:
        tenant = tenant_of(box, tmp_path, "")
        box.refresh_token = box.canvas.issue_refresh_token(ROSTER_SCOPES + scopes(tenant.exams))
        tenant = tenant_of(box, tmp_path, "")
        bodies, _, _, _ = read_canvas(box, tenant, canvas_roster, tmp_path / "granted", count_overrides=True)
        assert bodies
        box.refresh_token = box.canvas.issue_refresh_token(ROSTER_SCOPES)
        tenant = tenant_of(box, tmp_path, "")
        with pytest.raises(http.AuthError, match="HTTP 401"):
            read_canvas(box, tenant, canvas_roster, tmp_path / "roster-only")
    assert scopes(None) == ()
    classic_only = scopes(tenant.exams.__class__(new_quizzes=False))
    assert "url:GET|/api/v1/courses/:course_id/assignments" not in classic_only and len(classic_only) == 3
    assert not any("/api/quiz/" in s for s in classic_only)
    assert set(scopes(tenant.exams)) <= set(FAKE_SCOPES.values())
    assert len(set(scopes(tenant.exams))) == len(scopes(tenant.exams)) == 6


# --- OneRoster ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_line_items_read_through_syncd_equal_the_expected_mapping(version, tmp_path):
    roster = Roster.generate(seed=4, users=40, classes=12, enrollments=120)
    items = lineitems.generate(roster, per_class=3)
    template = "https://lms.example.edu/classes/{class_id}/items/{id}"
    with Sandbox(roster, version=version, max_limit=7) as box:
        box.oneroster.line_items = items
        tenant = tenant_of(box, tmp_path, f'select = "title"\ntitle_pattern = "^Unit Exam"\n'
                                          f'default_duration_min = 40\ndefault_password = "or-pass"\n'
                                          f'url_template = "{template}"\n')
        source = OneRosterSource(tenant.source, datetime.now(UTC).date())
        bodies, failed = {}, set()
        for page in line_items(getter(source), tenant.source.base_url, version, 5, tenant.exams):
            for record in page:
                if isinstance(record, Exam):
                    if record.published:
                        body = exams.exam_body(record, tenant.exams)
                        bodies[body.pop("ids")["external"]] = body
                else:
                    failed.add(record.source_id)
        assert source.requests >= len(items) // 7
    expected, expected_failed = lineitems.expected_exams(items, roster, url_template=template, duration=40,
                                                         password="or-pass", proctor_types={TS: {}},
                                                         title_pattern="^Unit Exam")
    assert bodies == expected and failed == expected_failed
    assert len(bodies) > 5 and failed


def test_a_provider_without_a_gradebook_is_a_clear_error(tmp_path):
    roster = Roster.generate(seed=4, users=20, classes=4, enrollments=40)
    with Sandbox(roster, version="1.2") as box:
        box.oneroster.gradebook = False
        tenant = tenant_of(box, tmp_path, 'select = "all"\n')
        source = OneRosterSource(tenant.source, datetime.now(UTC).date())
        with pytest.raises(GradebookUnavailable, match="HTTP 404"):
            list(line_items(getter(source), tenant.source.base_url, "1.2", 100, tenant.exams))
        # 1.2 assessmentLineItems carry no dates.
        box.oneroster.gradebook = True
        box.oneroster.line_items = lineitems.generate(roster)
        token = requests.post(box.token_url, data={"grant_type": "client_credentials"}, timeout=5,
                              auth=(box.oneroster.client_id, box.oneroster.client_secret)).json()["access_token"]
        url = box.source_url.replace("/rostering/v1p2", "/gradebook/v1p2") + "/assessmentLineItems"
        rows = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
        assert rows["assessmentLineItems"] and all("dueDate" not in r for r in rows["assessmentLineItems"])


def test_a_gradebook_the_client_may_not_read_is_a_clear_error(tmp_path):
    roster = Roster.generate(seed=4, users=20, classes=4, enrollments=40)
    with Sandbox(roster, faults=[Fault(403, collection="lineItems")]) as box:
        box.oneroster.line_items = lineitems.generate(roster)
        tenant = tenant_of(box, tmp_path, 'select = "all"\n')
        source = OneRosterSource(tenant.source, datetime.now(UTC).date())
        with pytest.raises(GradebookUnavailable, match="HTTP 403"):
            list(line_items(getter(source), tenant.source.base_url, "1.1", 100, tenant.exams))


def test_the_1_2_token_scope_gains_the_gradebook_only_with_exams():
    core = "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly"
    assert token_scope(core, "1.2", True) == f"{core} {GRADEBOOK_SCOPE}"
    assert token_scope(core, "1.2", False) == core
    assert token_scope(core, "1.1", True) == core
    assert token_scope(f"{core} {GRADEBOOK_SCOPE}", "1.2", True) == f"{core} {GRADEBOOK_SCOPE}"


# --- provision ------------------------------------------------------------------------------


COURSE = {"ids": {"external": "SIS-C1"}, "title": "Algebra 101"}


def exam(**changes) -> dict:
    body = {"ids": {"external": "quiz:1"}, "title": "Midterm", "type": "online", "practice": False,
            "limitedScope": False, "configuration": {
                "type": "primary", "url": "https://canvas.example.edu/courses/1/quizzes/1",
                "access": {"open": "2026-10-01T14:00:00Z", "close": "2026-10-01T18:00:00Z"},
                "duration": 60, "password": "pw", "attempts": 1, "proctorTypes": {TS: {}}}}
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for key in parents:
            target = target[key]
        if value is ...:
            target.pop(last, None)
        else:
            target[last] = value
    return body


def post(box, body: dict) -> requests.Response:
    app = box.provision
    return requests.post(f"{box.target_url}/v2/installs/{app.install_sid}/provision", json=body,
                         headers={"token": app.token}, timeout=5)


@pytest.fixture
def target():
    with Sandbox(Roster.generate(seed=1, users=5, classes=1, enrollments=5)) as box:
        yield box


@pytest.mark.parametrize(("changes", "message"), [
    ({"ids": {}}, "Exam IDs must contain either sid or external"),
    ({"ids": {"lms": "1"}}, "Exam IDs must contain either sid or external"),
    ({"ids": {"sid": "EX123"}}, "must match ^EX[a-z0-9]{32}$"),
    ({"title": ...}, "exam.title is required for a new exam"),
    ({"configuration": ...}, "exam.configuration is required for a new exam"),
    ({"colour": "red"}, "exam: unknown keys ['colour']"),
    ({"type": "oral"}, "exam.type has an invalid value"),
    ({"practice": "no"}, "exam.practice has an invalid value"),
    ({"configuration__url": ...}, "exam.configuration.url is required"),
    ({"configuration__password": ""}, "exam.configuration.password is required"),
    ({"configuration__access": {"open": "2026-10-01T14:00:00Z"}}, "access.close are required isoDates"),
    ({"configuration__access": {"open": "2026-10-01", "close": "2026-10-02"}}, "required isoDates"),
    ({"configuration__duration": 0}, "exam.configuration.duration must be a positive integer"),
    ({"configuration__duration": ...}, "exam.configuration.duration must be a positive integer"),
    ({"configuration__attempts": -1}, "exam.configuration.attempts must be a positive integer"),
    ({"configuration__proctorTypes": {}}, "exam.configuration.proctorTypes is required"),
    ({"configuration__proctorTypes": {"TS1": {}}}, "is not a proctor type sid"),
    ({"configuration__type": "extra"}, "exam.configuration.type must be primary or accommodation"),
    ({"configuration__ids": 5}, "exam.configuration.ids must be a string"),
    ({"configuration__scheduling": {"open": "soon"}}, "scheduling dates must be isoDates or empty"),
])
def test_the_fake_provision_refuses_invalid_exams_with_invalidinput(target, changes, message):
    response = post(target, {"course": COURSE, "exam": exam(**changes)})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALIDINPUT" and message in response.json()["message"]
    assert target.provision.courses == {}  # nothing applied


def test_the_fake_provision_accepts_what_the_openapi_sample_sends(target):
    body = exam(deliverySystem="", configuration__scheduling={"open": "", "close": ""},
                configuration__ids={"api": "config-1"}, description=None)
    assert post(target, {"course": COURSE, "exam": body}).status_code == 200
    target.provision.exam_book.config_ids_object = False
    assert post(target, {"course": COURSE, "exam": body}).status_code == 400


def test_exams_are_created_found_and_updated_with_their_sids(target):
    first = post(target, {"course": COURSE, "exam": exam()}).json()
    assert first["exam"]["result"] == first["configuration"]["result"] == "Created"
    assert EXAM_SID.match(first["exam"]["sid"]) and first["configuration"]["sid"].startswith("EC")
    assert len(first["configuration"]["sid"]) == 34 and first["configuration"]["sid"][2:].isalnum()
    again = post(target, {"course": COURSE, "exam": exam()}).json()
    assert (again["exam"]["result"], again["configuration"]["result"]) == ("Found Existing", "Found Existing")
    assert again["exam"]["sid"] == first["exam"]["sid"]
    renamed = post(target, {"course": COURSE, "exam": exam(title="Midterm 2")}).json()
    assert (renamed["exam"]["result"], renamed["configuration"]["result"]) == ("Updated", "Found Existing")
    moved = post(target, {"course": COURSE, "exam": exam(title="Midterm 2", configuration__duration=90)}).json()
    assert (moved["exam"]["result"], moved["configuration"]["result"]) == ("Found Existing", "Updated")
    by_sid = exam(title=..., configuration=..., ids={"sid": first["exam"]["sid"]})
    assert post(target, {"course": COURSE, "exam": by_sid}).json()["exam"]["result"] == "Found Existing"
    unknown = post(target, {"course": COURSE, "exam": exam(ids={"sid": "EX" + "0" * 32})})
    assert unknown.status_code == 404 and unknown.json()["code"] == "RESOURCENOTFOUND"
    assert snapshot(target.provision)["quiz:1"]["configuration"]["duration"] == 90
    # The seeded window (October 2026) had opened: the fake notes the change that breaks bookings.
    assert target.provision.exam_book.late_changes == ["quiz:1"]
    future = {"open": "2099-10-01T14:00:00Z", "close": "2099-10-01T18:00:00Z"}
    post(target, {"course": COURSE, "exam": exam(ids={"external": "quiz:9"}, configuration__access=future)})
    post(target, {"course": COURSE, "exam": exam(ids={"external": "quiz:9"}, configuration__access=future,
                                                 configuration__duration=75)})
    assert target.provision.exam_book.late_changes == ["quiz:1"]  # not open yet: no booking to break
    assert snapshot(target.provision)["quiz:1"]["course"] == "SIS-C1"
    assert target.provision.exam_book.duplicates() == 0
    target.provision.exam_book.one_id_type = True
    both = exam(ids={"sid": first["exam"]["sid"], "external": "quiz:1"})
    assert "only one ID type" in post(target, {"course": COURSE, "exam": both}).json()["message"]


def test_the_v1_put_soft_deletes_an_exam(target):
    first = post(target, {"course": COURSE, "exam": exam()}).json()
    app = target.provision
    url = f"{target.target_url}/v1/installs/{app.install_sid}/courses/{first['course']['sid']}/exams/" \
          f"{first['exam']['sid']}"
    assert requests.put(url, json={"title": "Midterm", "status": "gone"}, headers={"token": app.token},
                        timeout=5).status_code == 400
    assert requests.put(url, json={"title": "Midterm", "status": "deleted"}, timeout=5).status_code == 401
    assert requests.put(url.replace("/exams/EX", "/exams/EY"), json={"title": "x", "status": "deleted"},
                        headers={"token": app.token}, timeout=5).status_code == 404
    done = requests.put(url, json={"title": "Midterm", "status": "deleted"}, headers={"token": app.token}, timeout=5)
    assert done.json() == {"sid": first["exam"]["sid"], "status": "deleted"}
    assert snapshot(app) == {} and "quiz:1" in snapshot(app, deleted=True)
    assert post(target, {"course": COURSE, "exam": exam()}).json()["exam"]["result"] == "Updated"  # restored
    assert "quiz:1" in snapshot(app)


def test_syncd_exam_bodies_pass_the_fake_and_land_as_expected(canvas_roster, book, tmp_path):
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        tenant = tenant_of(box, tmp_path, "")
        bodies, mapped, _, _ = read_canvas(box, tenant, canvas_roster, tmp_path)
        for record in mapped.values():
            if record.published:
                course = {"ids": {"lms": record.course_id}, "title": "course"}
                answer = post(box, {"course": course, "exam": exams.exam_body(record, tenant.exams)})
                assert answer.status_code == 200, answer.text
        landed = snapshot(box.provision)
    assert {k: {f: v for f, v in b.items() if f != "course"} for k, b in landed.items()} == bodies
    assert all(landed[k]["course"] == mapped[k].course_id for k in landed)


def test_the_readers_follow_link_paging_on_both_base_paths(canvas_roster, book, tmp_path):
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        small = tenant_of(box, tmp_path, "", source_extra="page_size = 1\n")
        paged, _, paged_failed, _ = read_canvas(box, small, canvas_roster, tmp_path / "small")
        requests_small = box.canvas.requests
        whole, _, whole_failed, _ = read_canvas(box, tenant_of(box, tmp_path, ""), canvas_roster, tmp_path / "whole")
        # One quiz, assignment or quiz-API object per page: more than twice the requests, the same exams.
        assert requests_small > 2 * (box.canvas.requests - requests_small)
        searched = raw(box, f"/api/v1/courses/{next(iter(book.quizzes.values()))['course_id']}/quizzes",
                       search_term="PROCTORED").json()
    assert paged == whole and paged_failed == whole_failed
    assert searched and all("proctored" in q["title"].lower() for q in searched)


def test_a_canvas_page_that_is_not_a_list_stops_the_read():
    def reader(body: bytes, envelope_ok: bool = True) -> CanvasReader:
        def get(url: str) -> requests.Response:
            response = requests.Response()
            response.status_code, response._content, response.url = 200, body, url
            return response
        return CanvasReader(get, lambda response, seen: "", lambda path, params: f"https://canvas.test{path}")

    with pytest.raises(SourceError, match="not JSON"):
        list(reader(b"<html>").pages("/api/v1/courses/1/quizzes"))
    with pytest.raises(SourceError, match="expected a list"):
        list(reader(b'{"errors": []}').pages("/api/v1/courses/1/quizzes"))
    with pytest.raises(SourceError, match="expected a list in 'quiz_submissions'"):
        list(reader(b"[]").pages("/api/v1/courses/1/quizzes/2/submissions", envelope="quiz_submissions"))
    assert list(reader(b'{"quiz_submissions": [{"id": 1}]}').pages("/x", envelope="quiz_submissions")) == [[{"id": 1}]]


def test_a_line_item_server_that_ignores_offset_is_a_pagination_loop(tmp_path):
    roster = Roster.generate(seed=4, users=20, classes=6, enrollments=40)
    with Sandbox(roster, ignore_offset=True) as box:
        box.oneroster.line_items = lineitems.generate(roster, per_class=3)
        tenant = tenant_of(box, tmp_path, 'select = "all"\n')
        source = OneRosterSource(tenant.source, datetime.now(UTC).date())
        with pytest.raises(SourceError, match="pagination loop"):
            list(line_items(getter(source), tenant.source.base_url, "1.1", 5, tenant.exams))
