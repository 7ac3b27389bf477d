"""The standard headers a sender may set besides ``X-`` ones, each checked for its syntax.

Only headers that say how a message relates to a list or a thread, or that it was sent
automatically; never one that changes who it is from or to. One-click unsubscribe
(RFC 8058) is what Gmail and Yahoo require of bulk senders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

#: ``X-`` and printable ASCII without colon; short enough to never need folding.
CUSTOM_NAME = re.compile(r"[Xx]-[!-9;-~]{1,62}")

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
#: A message id as RFC 5322 section 3.6.4 writes it: ``<left@right>``.
_MSG_ID = rf"<{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[!-Z^-~]*\])>"
_MSG_IDS = re.compile(rf"\s*{_MSG_ID}(?:\s+{_MSG_ID})*\s*")
#: ``<https:...>`` or ``<mailto:...>`` (RFC 2369), no spaces or angle brackets inside.
_UNSUBSCRIBE_URI = r"<(?:https://[!-;=?-~]+|mailto:[!-;=?-~]+)>"
_UNSUBSCRIBE = re.compile(rf"\s*{_UNSUBSCRIBE_URI}(?:\s*,\s*{_UNSUBSCRIBE_URI})*\s*")
#: RFC 2919: an optional description, then ``<label.namespace>``.
_LIST_ID = re.compile(rf"[^<>]*<{_ATEXT}(?:\.{_ATEXT})+>\s*")
ONE_CLICK = "List-Unsubscribe=One-Click"
_AUTO_SUBMITTED = re.compile(r"(?i)\s*(no|auto-generated|auto-replied)\s*(;.*)?")


def _check(pattern: re.Pattern[str], what: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if pattern.fullmatch(value) else what

    return check


#: Each standard header allowed, by its lower-case name: its spelling and its check.
STANDARD: Mapping[str, tuple[str, Callable[[str], str | None]]] = {
    "list-unsubscribe": (
        "List-Unsubscribe",
        _check(_UNSUBSCRIBE, "one or more <https:...> or <mailto:...> URIs, comma-separated"),
    ),
    "list-unsubscribe-post": (
        "List-Unsubscribe-Post",
        lambda value: None if value.strip() == ONE_CLICK else f"exactly {ONE_CLICK!r}",
    ),
    "list-id": ("List-Id", _check(_LIST_ID, "an optional name, then <list-label.domain>")),
    "in-reply-to": ("In-Reply-To", _check(_MSG_IDS, "one or more message ids, <left@right>")),
    "references": ("References", _check(_MSG_IDS, "message ids <left@right>, space-separated")),
    "auto-submitted": (
        "Auto-Submitted",
        _check(_AUTO_SUBMITTED, "`no`, `auto-generated` or `auto-replied`"),
    ),
}


def checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with standard names spelled as RFCs do; raises ``ValueError`` naming
    the first header that is not allowed or not well formed."""
    result: dict[str, str] = {}
    for name, value in headers.items():
        standard = STANDARD.get(name.lower())
        if standard is not None:
            spelling, check = standard
            if (expected := check(value)) is not None:
                raise ValueError(f"header {spelling!r}: expected {expected}")
            name = spelling
        elif not CUSTOM_NAME.fullmatch(name):
            allowed = ", ".join(spelling for spelling, _ in STANDARD.values())
            raise ValueError(f"header {name!r}: only custom `X-` headers and {allowed} may be set")
        if name.lower() in (taken.lower() for taken in result):
            raise ValueError(f"header {name!r} is given twice")
        result[name] = value
    if "List-Unsubscribe-Post" in result and "https://" not in result.get("List-Unsubscribe", ""):
        raise ValueError(
            "header 'List-Unsubscribe-Post' needs a List-Unsubscribe header with an "
            "<https:...> URI (RFC 8058)"
        )
    return result
