"""What ``serve`` checks before it listens, and ``check-config`` with it: settings that
cannot run fail here, each naming the variable to fix, so a deploy can gate on them."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from notifier.errors import ConfigError
from notifier.keys import KeyRing
from notifier.schemas import normalize_address
from notifier.settings import Settings
from notifier.templates import TemplateLibrary

PREFIX = "NOTIFIER_"
#: Read by the command-line client (`send`, `status`) or the test suite, not the service.
OTHER_VARIABLES = frozenset(
    {"NOTIFIER_URL", "NOTIFIER_API_KEY", "NOTIFIER_TEST_POSTGRES_URL", "NOTIFIER_REQUIRE_POSTGRES"}
)


@dataclass(frozen=True)
class Prepared:
    """What the checks read, for ``serve`` to run with."""

    keys: KeyRing
    templates: TemplateLibrary


def preflight(settings: Settings) -> Prepared:
    """Check ``settings`` as ``serve`` would run them; the API keys and templates they
    name, read and checked."""
    settings.check_startable()
    try:
        normalize_address(settings.sender, settings.allow_special_use_domains)
    except ValueError as exc:
        raise ConfigError(f"NOTIFIER_MAIL_FROM: {exc}") from None
    settings.smtp_secret()
    keys = KeyRing.from_settings(settings)
    if settings.database_kind == "sqlite":
        writable(settings.sqlite_path, "NOTIFIER_DATABASE_URL")
    writable(settings.ack_file, "NOTIFIER_ACK_FILE")
    if settings.dev:
        writable(settings.dev_mail_dir / "x.eml", "NOTIFIER_DEV_MAIL_DIR")
    return Prepared(keys, TemplateLibrary.load(settings.template_dir))


def writable(path: Path, variable: str) -> None:
    """``path`` can be created or appended to: it or its nearest existing folder is writable."""
    if path.is_dir():
        raise ConfigError(f"{variable}: {path} is a directory, not a file")
    target = path
    while not target.exists():
        target = target.parent
    if target != path and not target.is_dir():
        raise ConfigError(f"{variable}: {path} cannot be created: {target} is not a directory")
    if not os.access(target, os.W_OK):
        what = "file" if target == path else "directory"
        raise ConfigError(f"{variable}: the {what} {target} is not writable by this user")


def unknown_variables(names: Iterable[str]) -> list[str]:
    """A warning for each ``NOTIFIER_*`` name that no setting reads, with the closest one.

    A misspelled variable would otherwise be ignored in silence, its default used.
    """
    known = {PREFIX + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    warnings = []
    for name in sorted(set(names)):
        if not name.startswith(PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a notifier setting and is ignored{hint}")
    return warnings
