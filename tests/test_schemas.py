"""Validation of incoming notifications: nothing unsafe is ever accepted."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from notifier.domain import Address, Recipient, RecipientKind, RecipientStatus
from notifier.schemas import (
    SPECIAL_USE_ALLOWED,
    NamedAddress,
    NotificationRequest,
    normalize_address,
)

SENDER = Address("notifier@example.com")


def request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to": ["ada@example.com"], "subject": "Hello", "text": "Hi Ada"}
    body.update(fields)
    return body


def validate(**fields: Any) -> NotificationRequest:
    return NotificationRequest.model_validate(request(**fields))


def test_bare_addresses_and_named_addresses_are_both_accepted() -> None:
    accepted = validate(
        to=["ada@example.com", {"address": "bob@example.com", "name": "Bob Builder"}],
        cc=[{"address": "chloe@example.com"}],
    )

    content = accepted.content(SENDER)
    assert content.to == (
        Address("ada@example.com"),
        Address("bob@example.com", "Bob Builder"),
    )
    assert content.cc == (Address("chloe@example.com"),)


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("ada@münchen.de", id="bare"),
        pytest.param({"address": "ada@münchen.de", "name": "Ada"}, id="named"),
    ],
)
def test_international_domain_is_normalised_to_its_ascii_form(given: object) -> None:
    accepted = validate(to=[given])

    (address,) = accepted.content(SENDER).to
    assert address.address == "ada@xn--mnchen-3ya.de"


def test_domain_case_is_normalised_and_local_part_kept() -> None:
    accepted = validate(to=["Ada@Example.COM"])

    assert accepted.to == ["Ada@example.com"]


BAD_ADDRESSES = [
    pytest.param("Ada <a@example.com>", id="display-name"),
    pytest.param("a@b.org)<c@d.org>", id="comment-then-angle-address"),
    pytest.param("a@b.org> NOTIFY=SUCCESS", id="smtp-parameter-injection"),
    pytest.param("a@x.org, b@y.org", id="two-addresses"),
    pytest.param("a@example.com\r\nRCPT TO:<x@evil.example>", id="crlf-injection"),
    pytest.param("a@example.com\x00", id="nul"),
    pytest.param("a@" + "b" * 64 + ".com", id="domain-label-of-64"),
    pytest.param("ada@example", id="no-dot-in-domain"),
    pytest.param("ada@[127.0.0.1]", id="address-literal"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_malformed_or_smuggling_address_is_rejected(address: str) -> None:
    with pytest.raises(ValidationError, match=r"to\.0"):
        validate(to=[address])


@pytest.mark.parametrize("field", ["cc", "bcc", "reply_to"])
def test_every_address_list_is_validated(field: str) -> None:
    with pytest.raises(ValidationError, match="invalid email address"):
        validate(**{field: ["Ada <a@example.com>"]})


def test_sender_address_is_validated() -> None:
    with pytest.raises(ValidationError, match="invalid email address"):
        validate(**{"from": "a@b.org> NOTIFY=SUCCESS"})


def test_named_address_is_validated() -> None:
    with pytest.raises(ValidationError, match="invalid email address"):
        validate(to=[{"address": "a@x.org, b@y.org", "name": "Two"}])


def test_local_part_of_64_characters_is_accepted() -> None:
    address = "a" * 64 + "@example.com"

    assert validate(to=[address]).to == [address]


def test_local_part_of_65_characters_is_rejected() -> None:
    with pytest.raises(ValidationError):
        validate(to=["a" * 65 + "@example.com"])


def test_domain_label_of_63_characters_is_accepted() -> None:
    address = "a@" + "b" * 63 + ".com"

    assert validate(to=[address]).to == [address]


#: email-validator refuses each of these; NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS accepts them.
SPECIAL_USE_ADDRESSES = [
    pytest.param("a@b.test", "a@b.test", id="test"),
    pytest.param("x@corp.local", "x@corp.local", id="local"),
    pytest.param("root@localhost", "root@localhost", id="localhost-without-a-dot"),
    pytest.param("a@example.invalid", "a@example.invalid", id="invalid"),
    pytest.param("a@abc.onion", "a@abc.onion", id="onion"),
    pytest.param("a@1.0.0.10.in-addr.arpa", "a@1.0.0.10.in-addr.arpa", id="arpa"),
    pytest.param("Ada@Mail.Corp.LOCAL", "Ada@mail.corp.local", id="domain-case-normalised"),
    pytest.param("a@münchen.local", "a@xn--mnchen-3ya.local", id="international"),
]
ALLOWED = {SPECIAL_USE_ALLOWED: True}


@pytest.mark.parametrize(("address", "normalised"), SPECIAL_USE_ADDRESSES)
def test_special_use_domain_is_refused_naming_the_setting(address: str, normalised: str) -> None:
    with pytest.raises(ValueError, match="NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS=true") as raised:
        normalize_address(address)

    assert f"{normalised.partition('@')[2]} is a special-use domain" in str(raised.value)


@pytest.mark.parametrize(("address", "normalised"), SPECIAL_USE_ADDRESSES)
def test_special_use_domain_is_accepted_when_allowed(address: str, normalised: str) -> None:
    assert normalize_address(address, True) == normalised


def test_special_use_domain_follows_the_validation_context_in_every_address_field() -> None:
    fields: dict[str, Any] = {
        "to": ["a@b.test", {"address": "b@corp.local", "name": "B"}],
        "cc": ["root@localhost"],
        "bcc": ["c@corp.local"],
        "reply_to": "d@corp.local",
        "from": {"address": "notifier@corp.local", "name": "Notifier"},
    }

    accepted = NotificationRequest.model_validate(request(**fields), context=ALLOWED)
    with pytest.raises(ValidationError) as refused:
        NotificationRequest.model_validate(request(**fields))
    with pytest.raises(ValidationError):
        NotificationRequest.model_validate(request(**fields), context={SPECIAL_USE_ALLOWED: False})

    assert [r.address for r in accepted.recipients()] == [
        "a@b.test",
        "b@corp.local",
        "root@localhost",
        "c@corp.local",
    ]
    assert isinstance(accepted.sender, NamedAddress)
    assert accepted.sender.address == "notifier@corp.local"
    assert {".".join(map(str, e["loc"][:2])) for e in refused.value.errors()} == {
        "to.0",
        "to.1",
        "cc.0",
        "bcc.0",
        "reply_to.0",
        "from.named",
    }
    assert all("NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS" in e["msg"] for e in refused.value.errors())


@pytest.mark.parametrize(
    ("address", "message"),
    [
        pytest.param("a b@corp.local", "before the @-sign: SPACE", id="bad-local-part"),
        pytest.param("a@-corp.local", "hyphen immediately after the @-sign", id="bad-label"),
        pytest.param("a@corp..local", "two periods in a row", id="empty-label"),
        pytest.param("a@" + "b" * 64 + ".local", "so many characters", id="label-of-64"),
        pytest.param("a" * 65 + "@corp.local", "over 64 octets", id="local-part-of-65"),
        pytest.param("a@intranet", "It should have a period", id="dotless-not-special-use"),
        pytest.param("localhost", "must have an @-sign", id="no-at-sign"),
        # email-validator's own words: it looks at the domain before the display name.
        pytest.param("Ada <a@corp.local>", "special-use or reserved name", id="display-name"),
    ],
)
def test_address_at_a_special_use_domain_is_still_checked_for_everything_else(
    address: str, message: str
) -> None:
    for allowed in (False, True):
        with pytest.raises(ValueError, match=message) as raised:
            normalize_address(address, allowed)
        assert "NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS" not in str(raised.value)


def test_the_longest_address_at_a_special_use_name_is_accepted_and_one_more_is_not() -> None:
    address = "a@" + ".".join(["b" * 63] * 3) + "." + "c" * 54 + ".local"  # 254 octets

    assert normalize_address(address, True) == address
    with pytest.raises(ValueError, match="too long"):
        normalize_address("a" + address, True)


UNSAFE_CHARACTERS = [
    pytest.param("\r", id="CR"),
    pytest.param("\n", id="LF"),
    pytest.param("\x00", id="NUL"),
    pytest.param("\x7f", id="DEL"),
    pytest.param("\x1b", id="ESC"),
    pytest.param("\u2028", id="line-separator"),
    pytest.param("\ud800", id="lone-surrogate"),
]


@pytest.mark.parametrize("char", UNSAFE_CHARACTERS)
def test_control_character_in_the_subject_is_rejected(char: str) -> None:
    with pytest.raises(ValidationError, match="subject"):
        validate(subject=f"Hello{char}Bcc: evil@example.com")


@pytest.mark.parametrize("char", UNSAFE_CHARACTERS)
def test_control_character_in_a_display_name_is_rejected(char: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        validate(to=[{"address": "ada@example.com", "name": f"Ada{char}Lovelace"}])


@pytest.mark.parametrize("char", UNSAFE_CHARACTERS)
def test_control_character_in_a_header_value_is_rejected(char: str) -> None:
    with pytest.raises(ValidationError, match="headers"):
        validate(headers={"X-Campaign": f"spring{char}Bcc: evil@example.com"})


def test_custom_x_headers_are_accepted() -> None:
    headers = {"X-Campaign": "spring", "x-lower-case": "fine", "X-Ticket": "Réf 42"}

    assert validate(headers=headers).headers == headers


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "Bcc",
        "Content-Type",
        "Subject",
        "Message-ID",
        "X-",
        "X Campaign",
        "X-Cam paign",
        "X-Campaign:",
        "X-Cam:paign",
        "X-Campaign\r\nBcc",
        "X-Campägne",
    ],
)
def test_header_that_is_not_a_plain_custom_x_header_is_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="only custom `X-` headers"):
        validate(headers={name: "value"})


def test_header_value_over_998_characters_is_rejected() -> None:
    with pytest.raises(ValidationError, match="longer than 998"):
        validate(headers={"X-Long": "a" * 999})


def test_header_name_too_long_for_one_line_is_rejected() -> None:
    with pytest.raises(ValidationError):
        validate(headers={"X-" + "a" * 1000: "value"})


def test_missing_both_text_and_html_is_rejected() -> None:
    body = request()
    del body["text"]

    with pytest.raises(ValidationError, match="give `text`, `html`, or both"):
        NotificationRequest.model_validate(body)


@pytest.mark.parametrize(
    ("text", "html"),
    [("Hi", None), (None, "<p>Hi</p>"), ("Hi", "<p>Hi</p>")],
)
def test_text_html_or_both_are_accepted(text: str | None, html: str | None) -> None:
    accepted = validate(text=text, html=html)

    assert (accepted.text, accepted.html) == (text, html)


def test_unknown_top_level_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="importance"):
        validate(importance="high")


def test_unknown_field_in_a_named_address_is_rejected() -> None:
    with pytest.raises(ValidationError, match="comment"):
        validate(to=[{"address": "ada@example.com", "comment": "hi"}])


def test_empty_to_is_rejected() -> None:
    with pytest.raises(ValidationError, match="to"):
        validate(to=[])


@pytest.mark.parametrize("field", ["text", "html"])
def test_nul_in_a_body_is_rejected(field: str) -> None:
    with pytest.raises(ValidationError, match="not allowed in a body"):
        validate(**{field: "Hello\x00world"})


@pytest.mark.parametrize("field", ["text", "html"])
def test_tab_cr_and_lf_in_a_body_are_allowed(field: str) -> None:
    body = "Name:\tAda\r\nReport:\tready\n"

    assert getattr(validate(**{field: body}), field) == body


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"note": "bad \ud800"}, id="value"),
        pytest.param({"bad \udfff": 1}, id="key"),
        pytest.param({"nested": {"list": ["ok", "\udc80"]}}, id="nested"),
    ],
)
def test_lone_surrogate_in_metadata_is_rejected(metadata: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="not valid Unicode"):
        validate(metadata=metadata)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"n": 2**64}, id="integer-beyond-64-bits"),
        pytest.param({"nested": [{"n": -(2**70)}]}, id="nested-integer"),
        pytest.param({"x": float("nan")}, id="nan"),
        pytest.param({"nested": {"list": [1.0, float("-inf")]}}, id="infinity"),
    ],
)
def test_metadata_the_store_cannot_write_back_is_rejected(metadata: dict[Any, Any]) -> None:
    with pytest.raises(ValidationError, match="metadata must be plain JSON"):
        validate(metadata=metadata)


def test_non_ascii_metadata_is_kept() -> None:
    metadata = {"city": "Köln", "tags": ["☃"], "count": 3}

    assert validate(metadata=metadata).metadata == metadata


def test_reply_to_given_as_one_string_becomes_a_list() -> None:
    accepted = validate(reply_to="support@example.com")

    assert accepted.reply_to == ["support@example.com"]


def test_reply_to_given_as_one_named_address_becomes_a_list() -> None:
    accepted = validate(reply_to={"address": "support@example.com", "name": "Support"})

    assert accepted.reply_to == [NamedAddress(address="support@example.com", name="Support")]


def test_recipients_are_deduplicated_case_insensitively_keeping_the_first_kind() -> None:
    accepted = validate(
        to=["ada@example.com", "ADA@example.com"],
        cc=["bob@example.com", {"address": "Ada@Example.com", "name": "Ada"}],
        bcc=["BOB@EXAMPLE.COM", "carol@example.com", "ada@EXAMPLE.com"],
    )

    assert accepted.recipients() == [
        Recipient("ada@example.com", RecipientKind.TO),
        Recipient("bob@example.com", RecipientKind.CC),
        Recipient("carol@example.com", RecipientKind.BCC),
    ]
    assert {r.status for r in accepted.recipients()} == {RecipientStatus.PENDING}


def test_bcc_only_recipient_keeps_the_bcc_kind() -> None:
    accepted = validate(bcc=["secret@example.com"])

    assert accepted.recipients()[-1] == Recipient("secret@example.com", RecipientKind.BCC)


def test_from_alias_sets_the_sender() -> None:
    accepted = NotificationRequest.model_validate(request(**{"from": "billing@example.com"}))

    assert accepted.sender == "billing@example.com"


def test_sender_field_name_is_accepted_too() -> None:
    accepted = validate(sender={"address": "billing@example.com", "name": "Billing"})

    assert accepted.sender == NamedAddress(address="billing@example.com", name="Billing")


def test_sender_is_optional() -> None:
    assert validate().sender is None
