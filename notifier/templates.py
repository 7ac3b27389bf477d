"""Named templates: folders under ``NOTIFIER_TEMPLATE_DIR``, rendered when a notification
is accepted.

Each folder is one template, named after it, holding ``subject.txt`` and at least one of
``body.txt`` and ``body.html``. They are Jinja2 templates rendered in its sandbox with
``StrictUndefined``: a template reads only the data of the request, and a variable the
data lacks is an error the caller sees (``422``), never an empty string in a sent
message. Only the HTML body is autoescaped; the subject and the text body are not HTML.

Rendering happens once, at accept time, so what is stored is what every retry sends,
whatever happens to the files later. The files are read at start-up and again on
SIGHUP (:class:`Templates`); an invalid file stops start-up, naming the file and line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from notifier.errors import ConfigError, NotifierError

log = logging.getLogger(__name__)

#: A template's name: its folder's. Lowercase, so names mean the same on every file system.
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SUBJECT, TEXT, HTML = "subject.txt", "body.txt", "body.html"
#: Largest template file read, in bytes: a template is a message, not a data file.
MAX_FILE_BYTES = 1024 * 1024

#: ``keep_trailing_newline``: a body file's last line break is part of the body.
_PLAIN = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)
_ESCAPED = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=True, keep_trailing_newline=True
)


class TemplateError(NotifierError):
    """A template cannot give a message for this request; ``code`` says why, for the API."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Rendered:
    """What a template gave for one request: the message's subject and bodies."""

    template: str
    subject: str
    text: str | None
    html: str | None


@dataclass(frozen=True)
class Template:
    name: str
    subject: jinja2.Template
    text: jinja2.Template | None
    html: jinja2.Template | None
    #: The top-level names the template reads from ``data``, sorted.
    variables: tuple[str, ...]

    @property
    def parts(self) -> list[str]:
        return [part for part, t in (("text", self.text), ("html", self.html)) if t is not None]

    def render(self, data: Mapping[str, Any]) -> Rendered:
        """Raises :class:`TemplateError` naming what went wrong (a missing variable, an
        operation the sandbox refuses, data of the wrong kind)."""
        try:
            return Rendered(
                template=self.name,
                # A subject is one line: a template file's trailing newline is not part of it.
                subject=self.subject.render(data).strip(),
                text=None if self.text is None else self.text.render(data),
                html=None if self.html is None else self.html.render(data),
            )
        except jinja2.UndefinedError as exc:
            raise TemplateError(
                "template_data_missing", f"template {self.name!r}: {exc.message} in `data`"
            ) from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(
                "template_render_failed", f"template {self.name!r}: not allowed: {exc}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - anything the data makes a template do
            raise TemplateError(
                "template_render_failed",
                f"template {self.name!r} cannot be rendered with this data: "
                f"{type(exc).__name__}: {exc}",
            ) from None


class TemplateLibrary:
    """The templates of one directory, as read at one moment."""

    def __init__(self, directory: Path, templates: Mapping[str, Template]) -> None:
        self.directory = directory
        self._templates = dict(templates)

    @classmethod
    def load(cls, directory: Path) -> TemplateLibrary:
        """Read and compile every template; a missing directory holds none.

        Raises :class:`ConfigError` naming the file (and line) of the first invalid one.
        """
        if not directory.exists():
            return cls(directory, {})
        if not directory.is_dir():
            raise ConfigError(f"NOTIFIER_TEMPLATE_DIR: {directory} is not a directory")
        templates = {}
        for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
            if folder.name.startswith("."):
                continue
            if not NAME.fullmatch(folder.name):
                raise ConfigError(
                    f"NOTIFIER_TEMPLATE_DIR: {folder}: a template's name is 1 to 64 lowercase "
                    "letters, digits, '-' and '_', starting with a letter or digit"
                )
            templates[folder.name] = _compile(folder)
        return cls(directory, templates)

    def names(self) -> list[str]:
        return sorted(self._templates)

    def all(self) -> list[Template]:
        """Every template, by name."""
        return [self._templates[name] for name in self.names()]

    def get(self, name: str) -> Template | None:
        return self._templates.get(name)

    def render(self, name: str, data: Mapping[str, Any]) -> Rendered:
        template = self._templates.get(name)
        if template is None:
            known = ", ".join(self.names()) or f"none: {self.directory} holds no templates"
            raise TemplateError("unknown_template", f"no template {name!r} (known: {known})")
        return template.render(data)


class Templates:
    """The library in use, read again on :meth:`reload` (SIGHUP) without a restart.

    A reload that finds an invalid file keeps the library in use and logs why: a running
    service must not lose its templates to a half-edited file.
    """

    def __init__(self, library: TemplateLibrary) -> None:
        self.library = library

    def reload(self) -> None:
        try:
            library = TemplateLibrary.load(self.library.directory)
        except ConfigError as exc:
            log.error("templates not reloaded, the previous ones stay in use: %s", exc)
            return
        self.library = library
        log.info("templates reloaded from %s: %s", library.directory, library.names())


def _compile(folder: Path) -> Template:
    subject = _read(folder / SUBJECT, _PLAIN, required=True)
    text = _read(folder / TEXT, _PLAIN)
    html = _read(folder / HTML, _ESCAPED)
    if text is None and html is None:
        raise ConfigError(f"NOTIFIER_TEMPLATE_DIR: {folder} needs {TEXT}, {HTML}, or both")
    assert subject is not None
    variables: set[str] = set()
    for _, ast in (part for part in (subject, text, html) if part is not None):
        variables |= meta.find_undeclared_variables(ast)
    return Template(
        name=folder.name,
        subject=subject[0],
        text=None if text is None else text[0],
        html=None if html is None else html[0],
        variables=tuple(sorted(variables)),
    )


def _read(
    path: Path, environment: SandboxedEnvironment, *, required: bool = False
) -> tuple[jinja2.Template, jinja2.nodes.Template] | None:
    if not path.exists():
        if required:
            raise ConfigError(f"NOTIFIER_TEMPLATE_DIR: {path} is missing")
        return None
    try:
        raw = path.read_bytes()
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(f"NOTIFIER_TEMPLATE_DIR: {path} is over {MAX_FILE_BYTES // 1024} KiB")
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"NOTIFIER_TEMPLATE_DIR: {path} is not UTF-8: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"NOTIFIER_TEMPLATE_DIR: {path} cannot be read: {exc}") from None
    try:
        ast = environment.parse(source, name=path.name, filename=str(path))
        return environment.from_string(source), ast
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"NOTIFIER_TEMPLATE_DIR: {path}, line {exc.lineno}: {exc.message}"
        ) from None
