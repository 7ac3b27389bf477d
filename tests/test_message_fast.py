"""The directly written bytes are the email package's bytes, and common shapes get them.

``render_fast`` must produce exactly what ``build_message(...).as_bytes`` produces
(for multipart, with the boundary it chose), or ``None`` so ``render`` builds it.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import workload
from notifier.domain import Address, Content
from notifier.message import build_message, render
from notifier.wire import WIRE_POLICY, make_boundary, render_fast
from tests.test_message import CONTENT, CREATED_AT, MESSAGE_ID

BOUNDARY = re.compile(rb'\r\n boundary="([^"]+)"\r\n')


def fast(
    content: Content, *, message_id: str = MESSAGE_ID, created_at: float = CREATED_AT
) -> bytes | None:
    return render_fast(content, message_id=message_id, created_at=created_at)


def slow(
    content: Content,
    *,
    message_id: str = MESSAGE_ID,
    created_at: float = CREATED_AT,
    like: bytes | None = None,
) -> bytes:
    """The email package's bytes; with the boundary found in ``like``, if it has one."""
    message = build_message(content, message_id=message_id, created_at=created_at)
    if like is not None and (boundary := BOUNDARY.search(like)):
        message.set_boundary(boundary.group(1).decode("ascii"))
    return message.as_bytes(policy=WIRE_POLICY)


def assert_same_as_slow(content: Content, **kw: Any) -> None:
    written = fast(content, **kw)
    assert written is not None, "the fast path declined"
    assert written == slow(content, like=written, **kw)


def case(label: str, **changes: Any) -> Any:
    return pytest.param(replace(CONTENT, **changes), id=label)


def named(*pairs: tuple[str, str | None]) -> tuple[Address, ...]:
    return tuple(Address(address, name) for address, name in pairs)


LONG_TO = named(*((f"recipient{i}@example.com", f"Recipient {i}") for i in range(5)))

HEADER_CASES = [
    case("typical"),
    case(
        "unnamed",
        sender=Address("n@example.com"),
        to=(Address("ada@example.com"), Address("bob@example.com", "")),
    ),
    case(
        "to-cc-reply-to",
        to=named(("ada@example.com", "Ada"), ("bob@example.com", None)),
        cc=named(("c@example.com", "Chloe"), ("d@example.com", None)),
        reply_to=named(("support@example.com", "Support desk"), ("e@example.com", None)),
    ),
    case("to-folded", to=LONG_TO),
    case("cc-folded", cc=LONG_TO),
    case("subject-empty", subject=""),
    case("subject-blank", subject="   "),
    case("subject-fits-exactly", subject="s" * 34 + " " + "t" * 34),  # line of 78
    case("subject-one-over", subject="s" * 35 + " " + "t" * 34),  # line of 79
    case("subject-long", subject="Your monthly report " * 10),
    case("subject-long-no-spaces", subject="x" * 120),
    case("subject-spaces-at-fold", subject="a" * 60 + "     " + "b" * 30),
    case("subject-encoded-word", subject="=?utf-8?q?hello?="),
    case("subject-equals-question", subject="Is 1 =? 2"),
    case("subject-non-ascii", subject="Grüße aus Köln ☃"),
    case("subject-non-ascii-long", subject="Grüße aus Köln ☃ " + "und noch mehr Text " * 6),
    case("subject-nbsp", subject="Bonjour\u00a0!"),
    case("subject-specials", subject='Re: [ticket #42] "quoted" (x) <y> a@b; c, d.'),
    case("name-comma", to=named(("ada@example.com", "Lovelace, Ada"))),
    case("name-dot", to=named(("ada@example.com", "Dr. A. Lovelace"))),
    case("name-quotes", to=named(("ada@example.com", 'Ada "Countess" Lovelace'))),
    case("name-backslash", to=named(("ada@example.com", "Ada \\ Lovelace"))),
    case("name-injection", reply_to=named(("s@example.com", 'Eve" <eve@evil.example>, "x'))),
    case("name-parentheses", to=named(("ada@example.com", "Ada (work)"))),
    case("name-specials-only", to=named(("ada@example.com", '.,"@'))),
    case("name-apostrophe", to=named(("o.brien@example.com", "Seán O'Brien"))),
    case("name-non-ascii", sender=Address("n@example.com", "Nötifier")),
    case("name-non-ascii-comma", to=named(("jorg@example.com", "Müller, Jörg"))),
    case("name-cjk", to=named(("li@example.com", "李小龙"))),
    case("name-emoji", to=named(("ada@example.com", "Ada 🚀"))),
    case("name-spaces", to=named(("ada@example.com", " Ada  Lovelace "))),
    case("name-encoded-word", to=named(("ada@example.com", "=?utf-8?q?Ada?="))),
    case("name-long", to=named(("ada@example.com", "Augusta Ada King, Countess of Lovelace" * 2))),
    case("local-part-atext", to=(Address("ada.lovelace+reports@example.com"),)),
    case("local-part-quoted", to=(Address("ada lovelace@example.com", "Ada"),)),
    case("domain-literal", to=(Address("ada@[192.0.2.1]", "Ada"),)),
    case("custom-headers", headers={"X-Campaign": "spring-2024", "x-ticket": "42"}),
    case("custom-header-empty", headers={"X-Empty": ""}),
    case("custom-header-non-ascii", headers={"X-Ticket": "Réf 42"}),
    case("custom-header-long", headers={"X-Long": "value " * 30}),
    case("custom-header-encoded-word", headers={"X-Note": "=?utf-8?q?x?="}),
    case("custom-header-spaces", headers={"X-Pad": "  padded  "}),
]


@pytest.mark.parametrize("content", HEADER_CASES)
def test_headers_are_the_packages_bytes(content: Content) -> None:
    assert_same_as_slow(content)


@pytest.mark.parametrize(
    "message_id",
    [
        MESSAGE_ID,
        "<a@b>",
        "<" + "x" * 70 + "@example.com>",
        "<id@[192.0.2.1]>",
        "not-a-message-id",
    ],
)
def test_message_id_is_the_packages_bytes(message_id: str) -> None:
    assert_same_as_slow(CONTENT, message_id=message_id)


@pytest.mark.parametrize(
    "created_at", [0.0, CREATED_AT, 1_709_251_199.999, 4_102_444_800.0, -61_000_000_000.0]
)
def test_date_is_the_packages_bytes(created_at: float) -> None:
    assert_same_as_slow(CONTENT, created_at=created_at)


BODIES = {
    "empty": "",
    "short": "Hello",
    "no-trailing-newline": "Hello\nworld",
    "trailing-newline": "Hello\nworld\n",
    "blank-lines": "\n\nHello\n\n\n",
    "crlf": "Hello\r\nworld\r\n",
    "bare-cr": "Hello\rworld\r",
    "single-dot": "first\n.\nlast\n",
    "from-line": "From here on\n>From there\n",
    "line-78": "x" * 78 + "\n",
    "line-79": "x" * 79 + "\n",
    "line-998": "y" * 998,
    "line-1000": "z " * 500,
    "trailing-space": "ends with a space \nand a tab\t\n",
    "equals": "a=b\n=?utf-8?q?x?=\n",
    "latin": "Grüße, Jörg,\nvoilà votre rapport. Ça marche très bien.\n",
    "latin-many-lines": "Zeile mit Umlaut ä\n" * 25,
    "latin-long-line": "é" * 2000 + "\n",
    "cjk": "你好\uff0c世界。这是你的月度报告。\n" * 3,
    "emoji": "Launch 🚀🚀🚀 done ✅\n",
    "mixed-long": ("ASCII line\n" * 12) + "ünïcödé " * 30 + "\n",
    "html": "<p>Hello <b>Ada</b>,</p>\n<p>your report is ready.</p>\n",
    "html-long-line": "<div>" + "<span>cell</span>" * 40 + "</div>",
}
BODY_PAIRS = [pytest.param(text, None, id=f"text-{k}") for k, text in BODIES.items()]
BODY_PAIRS += [pytest.param(None, html, id=f"html-{k}") for k, html in BODIES.items()]
BODY_PAIRS += [pytest.param(text, BODIES["html"], id=f"both-{k}") for k, text in BODIES.items()]
BODY_PAIRS += [
    pytest.param(None, None, id="neither"),
    pytest.param("", "", id="both-empty"),
    pytest.param(BODIES["latin"], BODIES["cjk"], id="both-non-ascii"),
]


@pytest.mark.parametrize(("text", "html"), BODY_PAIRS)
def test_bodies_are_the_packages_bytes(text: str | None, html: str | None) -> None:
    assert_same_as_slow(replace(CONTENT, text=text, html=html))


def test_the_benchmark_notification_takes_the_fast_path() -> None:
    n = workload.notification(CREATED_AT)

    assert_same_as_slow(n.content, message_id=n.message_id, created_at=n.created_at)


def test_render_returns_the_fast_bytes() -> None:
    assert render(CONTENT, message_id=MESSAGE_ID, created_at=CREATED_AT) == fast(CONTENT)


@pytest.mark.parametrize(
    "content",
    [
        case("smtputf8", to=(Address("jörg@example.com"),)),
        case("no-recipient", to=()),
        case("content-header", headers={"Content-Language": "en"}),
        case("unsafe-custom-header-name", headers={"X-A B": "x"}),
    ],
)
def test_unusual_messages_are_left_to_the_email_package(content: Content) -> None:
    assert fast(content) is None


@pytest.mark.parametrize(
    "content",
    [
        case("subject-newline", subject="Hello\nBcc: eve@evil.example"),
        case("name-newline", to=named(("ada@example.com", "Ada\r\nBcc: x"))),
        case("lone-surrogate-body", text="broken \ud800 text"),
    ],
)
def test_what_the_email_package_refuses_is_still_refused(content: Content) -> None:
    assert fast(content) is None
    with pytest.raises((ValueError, UnicodeError)):
        render(content, message_id=MESSAGE_ID, created_at=CREATED_AT)


def test_boundary_looks_like_the_generators() -> None:
    assert re.fullmatch(rb"={15}\d{19}==", make_boundary())


def test_boundary_found_in_a_part_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter([7, 8])
    monkeypatch.setattr(random, "randrange", lambda _stop: next(tokens))
    taken = b"--===============0000000000000000007==\r\n"

    assert make_boundary(b"text", taken) == b"===============0000000000000000008=="


# Property: whatever the content, the fast path writes the package's bytes or declines.

#: Header text around every edge: specials, quotes, spaces, encoded-word openers, non-ASCII.
HEADER_CHARS = st.sampled_from([*"aZ09 .,\"\\()<>@:;[]=?'!#-_~é☃中", "=?", "  ", "\u00a0"])
header_text = st.lists(HEADER_CHARS, max_size=30).map("".join)
subjects = st.one_of(header_text, st.integers(60, 90).map(lambda n: ("word " * 20)[:n]))
local_parts = st.from_regex(r"[a-z0-9!#$%&'*+/=?^_`{|}~. -]{1,10}", fullmatch=True)
domains = st.sampled_from(["example.com", "mail.example.org", "[192.0.2.1]", "x"])
addresses = st.builds(
    lambda local, domain, name: Address(f"{local}@{domain}", name),
    local_parts,
    domains,
    st.one_of(st.none(), header_text),
)
#: Body text: line breaks of every kind, long lines, dots, trailing blanks, non-ASCII.
BODY_CHARS = st.sampled_from(
    [*"aZ .=\t\r\n", "\r\n", ".\n", " \n", "é", "你好", "😀", "From ", "x" * 79, "y" * 300]
)
bodies = st.one_of(st.none(), st.lists(BODY_CHARS, max_size=40).map("".join))
contents = st.builds(
    Content,
    sender=addresses,
    to=st.lists(addresses, min_size=1, max_size=3).map(tuple),
    cc=st.lists(addresses, max_size=2).map(tuple),
    reply_to=st.lists(addresses, max_size=1).map(tuple),
    subject=subjects,
    text=bodies,
    html=bodies,
    headers=st.dictionaries(st.from_regex(r"X-[A-Za-z-]{1,8}", fullmatch=True), subjects),
)


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(contents)
def test_fast_path_writes_the_packages_bytes_for_any_content(content: Content) -> None:
    try:
        written = fast(content)
    except Exception as error:  # noqa: BLE001 - any error, so long as the package's is the same
        with pytest.raises(type(error)):
            slow(content)
        return
    assert written is not None
    assert written == slow(content, like=written)
