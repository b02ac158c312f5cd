"""The sandbox: fake OneRoster and provision servers on loopback, and a seeded roster.

Used by ``syncd demo``, by the tests and by the benchmarks. Everything listens on 127.0.0.1
only and stops with :meth:`Sandbox.stop`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from syncd.sandbox.oneroster import Fault, OneRosterApp
from syncd.sandbox.provision import ProvisionApp, Scripted
from syncd.sandbox.roster import Roster, expected_mapping
from syncd.sandbox.server import Serving

__all__ = ["Fault", "OneRosterApp", "ProvisionApp", "Roster", "Sandbox", "Scripted", "expected_mapping"]


class Sandbox:
    def __init__(self, roster: Roster | None = None, *, version: str = "1.1", vendor_prefix: str = "/district",
                 **oneroster: Any):
        self.roster = roster or Roster.generate()
        self.oneroster = OneRosterApp(self.roster, version=version, **oneroster)
        # A vendor prefix before /ims/...: the base URL must be taken as given, not built.
        self.oneroster.prefix = vendor_prefix + self.oneroster.prefix
        self.provision = ProvisionApp()
        self._servers = [Serving(self.oneroster), Serving(self.provision)]
        self.source_url = self._servers[0].url + self.oneroster.prefix
        self.token_url = self._servers[0].url + "/oauth/token"
        self.target_url = self._servers[1].url

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

    def tenant_toml(self, name: str = "lincoln", *, roles: str = '{ student = "learner", teacher = "instructor" }',
                    extra: str = "", source_extra: str = "", target_extra: str = "") -> str:
        """A tenant's config tables pointing at this sandbox (secrets as plain strings)."""
        app = self.oneroster
        token_url = f'token_url = "{self.token_url}"\n' if app.version == "1.2" else ""
        return (
            f'[tenants.{name}]\nschedule = "every 15m"\nroles = {roles}\n{extra}\n'
            f'[tenants.{name}.source]\ntype = "oneroster"\nbase_url = "{self.source_url}"\n'
            f'version = "{app.version}"\nclient_id = "{app.client_id}"\nclient_secret = "{app.client_secret}"\n'
            f"{token_url}{source_extra}\n"
            f'[tenants.{name}.target]\nbase_url = "{self.target_url}"\n'
            f'install_sid = "{self.provision.install_sid}"\ntoken = "{self.provision.token}"\n{target_extra}\n'
        )

    def write_config(self, path: Path, state_dir: Path, log_level: str = "info", **tenant: Any) -> Path:
        path.write_text(
            f'[daemon]\nstate_dir = "{state_dir}"\nlog_level = "{log_level}"\nlog_format = "json"\n\n'
            + self.tenant_toml(**tenant), encoding="utf-8")
        path.chmod(0o600)
        return path
