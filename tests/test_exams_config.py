"""[tenants.X.exams]: SPEC §7 keys, every error with its key path, exit 2 through the real command."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import syncd

from syncd import config as configuration

TS = "TS4b894875a1b24f4e9b2e1c9d0f8a7b6c"
CANVAS = """
[daemon]
state_dir = "{state}"
[tenants.stateu.source]
type = "canvas"
base_url = "https://canvas.example.edu"
access_token = "a-token"
[tenants.stateu.target]
base_url = "https://api.smarterproctoring.com"
install_sid = "AI0123456789abcdef0123456789abcdef"
token = "t"
"""
ONEROSTER = """
[daemon]
state_dir = "{state}"
[tenants.lincoln.source]
type = "oneroster"
base_url = "https://sis.example.org/ims/oneroster/v1p1"
client_id = "id"
client_secret = "s"
[tenants.lincoln.target]
base_url = "https://api.smarterproctoring.com"
install_sid = "AI0123456789abcdef0123456789abcdef"
token = "t"
"""


def parse(base: str, exams: str, tmp_path: Path) -> configuration.Config:
    tenant = "stateu" if "canvas" in base else "lincoln"
    text = base.format(state=tmp_path / "state") + f"[tenants.{tenant}.exams]\n{exams}"
    return configuration.parse(tomllib.loads(text), tmp_path / "syncd.toml")


def errors(base: str, exams: str, tmp_path: Path) -> list[str]:
    with pytest.raises(configuration.ConfigError) as caught:
        parse(base, exams, tmp_path)
    return caught.value.errors


def test_exams_are_off_unless_configured(tmp_path):
    config = configuration.parse(tomllib.loads(CANVAS.format(state=tmp_path)), tmp_path / "x.toml")
    assert config.tenants["stateu"].exams is None


def test_a_canvas_exams_table_takes_spec_defaults(tmp_path):
    exams = parse(CANVAS, f'proctor_types = {{ "{TS}" = {{}} }}\n', tmp_path).tenants["stateu"].exams
    assert exams is not None
    assert exams.select == "access_code" and exams.new_quizzes is True and exams.window_guard is True
    assert exams.on_removed == "report" and exams.limited_scope is False
    assert exams.default_duration_min is None and exams.default_password is None
    assert exams.proctor_types == {TS: {}}


def test_every_key_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("EXAM_PASSWORD", "sesame-value")
    config = parse(CANVAS, f"""
select = "title"
title_pattern = "(?i)\\\\bproctored\\\\b"
new_quizzes = false
proctor_types = {{ "{TS}" = {{ options = {{ recordScreen = {{}} }} }} }}
default_duration_min = 90
default_password = "env:EXAM_PASSWORD"
limited_scope = true
on_removed = "delete"
window_guard = false
""", tmp_path)
    exams = config.tenants["stateu"].exams
    assert exams.title_pattern.search("Final (Proctored)") and not exams.title_pattern.search("unproctored")
    assert (exams.new_quizzes, exams.default_duration_min, exams.limited_scope) == (False, 90, True)
    assert (exams.on_removed, exams.window_guard) == ("delete", False)
    assert exams.proctor_types[TS] == {"options": {"recordScreen": {}}}
    # The default password is a secret like any other: resolved, and registered for redaction.
    assert exams.default_password == "sesame-value" and "sesame-value" in config.secrets
    assert "sesame-value" not in repr(exams)


def test_ids_are_strings_whatever_the_toml_type(tmp_path):
    exams = parse(CANVAS, f'select = "ids"\nids = ["1234", 5678]\nproctor_types = {{ "{TS}" = {{}} }}\n',
                  tmp_path).tenants["stateu"].exams
    assert exams.ids == {"1234", "5678"}


@pytest.mark.parametrize(("exams", "expected"), [
    ('select = "some"\n', 'tenants.stateu.exams.select: must be one of'),
    ('select = "title"\n', "tenants.stateu.exams.title_pattern: required key is missing"),
    ('select = "title"\ntitle_pattern = "(unclosed"\n', "tenants.stateu.exams.title_pattern: not a valid regular"),
    ('title_pattern = "x"\n', 'tenants.stateu.exams.title_pattern: only used with select = "title"'),
    ('select = "ids"\n', "tenants.stateu.exams.ids: required key is missing"),
    ('select = "ids"\nids = []\n', "tenants.stateu.exams.ids: lists no id"),
    ('select = "ids"\nids = ["1", true]\n', "tenants.stateu.exams.ids[1]: must be a non-empty string"),
    ('ids = ["1"]\n', 'tenants.stateu.exams.ids: only used with select = "ids"'),
    ("default_duration_min = 0\n", "tenants.stateu.exams.default_duration_min: must be between 1 and"),
    ('default_duration_min = "60"\n', "tenants.stateu.exams.default_duration_min: must be an integer"),
    ('default_password = "env:SYNCD_NO_SUCH_VARIABLE"\n',
     "tenants.stateu.exams.default_password: environment variable SYNCD_NO_SUCH_VARIABLE is not set"),
    ('on_removed = "purge"\n', "tenants.stateu.exams.on_removed: must be one of 'report', 'delete'"),
    ("window_guard = 1\n", "tenants.stateu.exams.window_guard: must be true or false"),
    ('url_template = "https://x/{id}"\n', "tenants.stateu.exams.url_template: only used with a OneRoster source"),
    ("colour = 1\n", "tenants.stateu.exams.colour: unknown key"),
])
def test_canvas_exam_errors_name_their_key_path(tmp_path, exams, expected):
    found = errors(CANVAS, f'proctor_types = {{ "{TS}" = {{}} }}\n' + exams, tmp_path)
    assert any(e.startswith(expected) for e in found), found


@pytest.mark.parametrize(("table", "expected"), [
    ("", "tenants.stateu.exams.proctor_types: required key is missing"),
    ("proctor_types = {}\n", "tenants.stateu.exams.proctor_types: names no proctor type"),
    ('proctor_types = { "TS123" = {} }\n', "tenants.stateu.exams.proctor_types.TS123: must be a proctor type sid"),
    (f'proctor_types = {{ "{TS.upper()}" = {{}} }}\n', "must be a proctor type sid"),
    (f'proctor_types = {{ "{TS}" = 1 }}\n', f"tenants.stateu.exams.proctor_types.{TS}: must be a table"),
    (f'proctor_types = {{ "{TS}" = {{ option = {{}} }} }}\n', "unknown key(s) ['option']"),
    (f'proctor_types = {{ "{TS}" = {{ options = {{ a = 1 }} }} }}\n',
     f"tenants.stateu.exams.proctor_types.{TS}.options: must be a table of option"),
])
def test_proctor_types_are_required_and_checked(tmp_path, table, expected):
    found = errors(CANVAS, 'select = "all"\n' + table, tmp_path)
    assert any(expected in e for e in found), found


def test_a_oneroster_tenant_must_choose_what_to_select(tmp_path):
    table = f'proctor_types = {{ "{TS}" = {{}} }}\n'
    assert "tenants.lincoln.exams.select: required key is missing" in errors(ONEROSTER, table, tmp_path)
    found = errors(ONEROSTER, table + 'select = "access_code"\nnew_quizzes = true\n', tmp_path)
    assert any(e.startswith("tenants.lincoln.exams.select: lineItems carry no access code") for e in found)
    assert "tenants.lincoln.exams.new_quizzes: only used with a Canvas source" in found


def test_a_oneroster_url_template_is_checked(tmp_path):
    table = f'select = "all"\nproctor_types = {{ "{TS}" = {{}} }}\n'
    ok = parse(ONEROSTER, table + 'url_template = "https://lms.example.edu/a/{class_id}/{id}?x=1"\n', tmp_path)
    assert ok.tenants["lincoln"].exams.url_template == "https://lms.example.edu/a/{class_id}/{id}?x=1"
    for template, expected in (("https://x/{sourcedId}", "unknown placeholder(s) ['sourcedId']"),
                               ("https://x/{id", "not a valid template"),
                               ("ftp://x/{id}", "must make an https:// URL"),
                               ("http://lms.example.edu/{id}", "http:// is only allowed for loopback")):
        found = errors(ONEROSTER, table + f'url_template = "{template}"\n', tmp_path)
        assert any(e.startswith("tenants.lincoln.exams.url_template: ") and expected in e for e in found), found


def test_a_bad_exams_table_exits_2_with_every_error_and_no_state(tmp_path):
    state = tmp_path / "state"
    path = tmp_path / "syncd.toml"
    path.write_text(CANVAS.format(state=state) + """[tenants.stateu.exams]
select = "title"
title_pattern = "[unclosed"
proctor_types = { "TSnope" = {} }
default_password = "env:SYNCD_UNSET_EXAM_PASSWORD"
""", encoding="utf-8")
    result = syncd(path, "config", "validate")
    assert result.returncode == 2
    for key in ("exams.title_pattern: not a valid regular expression", "exams.proctor_types.TSnope:",
                "exams.default_password: environment variable SYNCD_UNSET_EXAM_PASSWORD"):
        assert f"tenants.stateu.{key}" in result.stderr
    assert not state.exists()
    # `sync` refuses the same file with the same exit status.
    assert syncd(path, "sync", "stateu").returncode == 2


def test_a_good_exams_table_validates_and_its_password_is_never_printed(tmp_path):
    path = tmp_path / "syncd.toml"
    path.write_text(CANVAS.format(state=tmp_path / "state") + f"""[tenants.stateu.exams]
proctor_types = {{ "{TS}" = {{}} }}
default_password = "env:SYNCD_EXAM_PASSWORD"
""", encoding="utf-8")
    result = syncd(path, "config", "validate", env={"SYNCD_EXAM_PASSWORD": "open-sesame-42"})
    assert result.returncode == 0, result.stderr
    assert "open-sesame-42" not in result.stdout + result.stderr


def test_an_empty_exams_table_turns_exams_on_and_says_what_it_lacks(tmp_path):
    found = errors(CANVAS, "", tmp_path)
    assert found == ["tenants.stateu.exams.proctor_types: required key is missing"]
    text = CANVAS.format(state=tmp_path) + "[tenants.stateu]\nexams = 3\n"
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.parse(tomllib.loads(text), tmp_path / "x.toml")
    assert caught.value.errors == ["tenants.stateu.exams: must be a table"]
