"""The sandbox: fake OneRoster, Canvas and provision servers on loopback, and seeded rosters.

Used by ``syncd demo``, by the tests and by the benchmarks. Everything listens on 127.0.0.1
only and stops with :meth:`Sandbox.stop`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from syncd.sandbox import canvas_roster
from syncd.sandbox.canvas import CanvasApp, CanvasFault
from syncd.sandbox.canvas_roster import CanvasRoster
from syncd.sandbox.oneroster import Fault, OneRosterApp
from syncd.sandbox.provision import ProvisionApp, Scripted
from syncd.sandbox.roster import Roster, expected_mapping
from syncd.sandbox.server import App, Request, Response, Serving, Timing

__all__ = ["CanvasApp", "CanvasFault", "CanvasRoster", "CanvasSandbox", "Fault", "OneRosterApp", "ProvisionApp",
           "Roster", "Sandbox", "Scripted", "Serving", "canvas_roster", "expected_mapping", "route_installs",
           "state_toml"]

DEFAULT_ROLES = '{ student = "learner", teacher = "instructor" }'

# The tests run every config on PostgreSQL with `--state-backend=postgresql` (tests/conftest.py):
# then this names the `[state] url` of a state directory (one database each); None: SQLite.
state_url_for: Callable[[Path], str] | None = None


def state_toml(state_dir: Path, url: str | None = None) -> str:
    """The config's ``[state]`` table for ``state_dir``: ``url``, else :data:`state_url_for`'s, else
    none (the SQLite file in the state directory)."""
    if url is None:
        url = state_url_for(Path(state_dir)) if state_url_for else ""
    return f'[state]\nurl = "{url}"\n\n' if url else ""


class _Sandbox:
    """A source app and the provision app, each on its own loopback port: free ports by default;
    ``port`` fixes the source's, and ``target`` (an app already served at a URL) shares one
    provision server between sandboxes (`syncd demo --serve`)."""

    default_tenant = "lincoln"

    def __init__(self, source_app: App, port: int = 0, target: tuple[ProvisionApp, str] | None = None):
        self._servers = [Serving(source_app, port)]
        if target is None:
            self.provision = ProvisionApp()
            self._servers.append(Serving(self.provision))
            self.target_url = self._servers[1].url
            self.target_timing: Timing | None = self._servers[1].timing  # the latency its answers had
        else:
            self.provision, self.target_url = target
            self.target_timing = None
        self.source_root = self._servers[0].url

    def __enter__(self) -> _Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

    def source_toml(self, source_extra: str, **options: Any) -> str:
        raise NotImplementedError

    def tenant_toml(self, name: str | None = None, *, roles: str = DEFAULT_ROLES, extra: str = "",
                    source_extra: str = "", target_extra: str = "", **options: Any) -> str:
        """A tenant's config tables pointing at this sandbox (secrets as plain strings)."""
        name = name or self.default_tenant
        return (
            f'[tenants.{name}]\nschedule = "every 15m"\nroles = {roles}\n{extra}\n'
            f"[tenants.{name}.source]\n{self.source_toml(source_extra, **options)}\n"
            f'[tenants.{name}.target]\nbase_url = "{self.target_url}"\n'
            f'install_sid = "{self.provision.install_sid}"\ntoken = "{self.provision.token}"\n{target_extra}\n'
        )

    def write_config(self, path: Path, state_dir: Path, log_level: str = "info", *, state_url: str | None = None,
                     **tenant: Any) -> Path:
        """A config for one tenant of this sandbox; ``state_url``: see :func:`state_toml`."""
        path.write_text(
            f'[daemon]\nstate_dir = "{state_dir}"\nlog_level = "{log_level}"\nlog_format = "json"\n\n'
            + state_toml(state_dir, state_url) + self.tenant_toml(**tenant), encoding="utf-8")
        path.chmod(0o600)
        return path


class Sandbox(_Sandbox):
    """OneRoster 1.1 or 1.2 behind a vendor prefix, and the provision API."""

    def __init__(self, roster: Roster | None = None, *, version: str = "1.1", vendor_prefix: str = "/district",
                 port: int = 0, target: tuple[ProvisionApp, str] | None = None, **oneroster: Any):
        self.roster = roster or Roster.generate()
        self.oneroster = OneRosterApp(self.roster, version=version, **oneroster)
        # A vendor prefix before /ims/...: the base URL must be taken as given, not built.
        self.oneroster.prefix = vendor_prefix + self.oneroster.prefix
        super().__init__(self.oneroster, port, target)
        self.source_url = self.source_root + self.oneroster.prefix
        self.token_url = self.source_root + "/oauth/token"

    def source_toml(self, source_extra: str, **options: Any) -> str:
        app = self.oneroster
        token_url = f'token_url = "{self.token_url}"\n' if app.auth == "oauth2" else ""
        if app.auth != ("oauth1" if app.version == "1.1" else "oauth2"):
            token_url += f'auth = "{app.auth}"\n'
        return (f'type = "oneroster"\nbase_url = "{self.source_url}"\nversion = "{app.version}"\n'
                f'client_id = "{app.client_id}"\nclient_secret = "{app.client_secret}"\n{token_url}{source_extra}')


class CanvasSandbox(_Sandbox):
    """A Canvas instance whose developer key is already authorized, and the provision API."""

    default_tenant = "stateu"

    def __init__(self, roster: CanvasRoster | None = None, *, port: int = 0,
                 target: tuple[ProvisionApp, str] | None = None, **canvas: Any):
        self.roster = roster or CanvasRoster.generate()
        self.canvas = CanvasApp(self.roster, **canvas)
        super().__init__(self.canvas, port, target)
        self.source_url = self.source_root
        self.refresh_token = self.canvas.issue_refresh_token()

    def source_toml(self, source_extra: str, auth: str = "refresh_token", **_: Any) -> str:
        """``auth``: "refresh_token" (in the config), "access_token", or "none" (from `syncd auth`)."""
        app = self.canvas
        credentials = f'client_id = "{app.client_id}"\nclient_secret = "{app.client_secret}"\n'
        if auth == "refresh_token":
            credentials += f'refresh_token = "{self.refresh_token}"\n'
        elif auth == "access_token":
            credentials = f'access_token = "{app.issue_access_token()}"\n'
        return f'type = "canvas"\nbase_url = "{self.source_url}"\naccount_id = "1"\n{credentials}{source_extra}'


def route_installs(apps: list[ProvisionApp]) -> App:
    """One provision server for several installs (one per tenant): each request goes to the app of
    the install sid in its path, ``/v1|v2/installs/{installSid}/…``."""
    by_sid = {app.install_sid: app for app in apps}

    def route(request: Request) -> Response | object:
        parts = request.path.split("/")
        app = by_sid.get(parts[3]) if len(parts) > 3 and parts[2] == "installs" else None
        return app(request) if app else Response(404, {"message": f"no install at {request.path}"})

    return route
