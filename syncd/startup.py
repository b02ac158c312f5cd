"""Start-up checks shared by the commands and the daemon (kept apart so that neither imports the other)."""

from __future__ import annotations

import structlog

from syncd import config as configuration


def warn_if_exposed(config: configuration.Config) -> None:
    """A config that holds a secret in plain text must be readable by its owner only."""
    try:
        mode = config.path.stat().st_mode
    except OSError:
        return
    if config.plain_secrets and mode & 0o077:
        structlog.get_logger("syncd.config").warning(
            "config.secret_readable_by_others", config=str(config.path), mode=oct(mode & 0o777),
            keys=list(config.plain_secrets),
            fix=f"chmod 600 {config.path}, or use env:, file: or credential: references")
