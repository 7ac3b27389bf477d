"""Reading pipelined replies: whole replies out of whatever pieces the socket delivers."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtplib import SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected

from notifier.dispatch.smtp.replies import ReplyReader


def fed(*chunks: bytes) -> ReplyReader:
    reader = ReplyReader()
    for chunk in chunks:
        reader.data_received(chunk)
    return reader


async def test_several_replies_in_one_read_come_out_one_at_a_time() -> None:
    reader = fed(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 Go ahead\r\n")

    replies = [await reader.next(1.0) for _ in range(3)]

    assert [(r.code, r.message) for r in replies] == [
        (250, "2.1.0 OK"),
        (250, "2.1.5 OK"),
        (354, "Go ahead"),
    ]


async def test_a_reply_split_across_reads_waits_for_its_end() -> None:
    reader = ReplyReader()
    waiting = asyncio.create_task(reader.next(5.0))
    for piece in (b"25", b"0-first line\r\n250", b" second", b" line\r\n"):
        reader.data_received(piece)
        await asyncio.sleep(0)

    reply = await waiting

    assert (reply.code, reply.message) == (250, "first line\nsecond line")


async def test_replies_before_the_connection_ended_are_still_read() -> None:
    reader = fed(b"250 OK\r\n421 4.3.2 Closing\r\n")
    reader.eof_received()

    assert (await reader.next(1.0)).code == 250
    assert (await reader.next(1.0)).code == 421
    with pytest.raises(SMTPServerDisconnected):
        await reader.next(1.0)


async def test_a_line_without_a_reply_code_is_a_malformed_reply() -> None:
    reader = fed(b"250 OK\r\nhello there\r\n")

    assert (await reader.next(1.0)).code == 250
    with pytest.raises(SMTPResponseException) as caught:
        await reader.next(1.0)
    assert caught.value.code == -1


async def test_a_reply_that_never_ends_is_refused_once_too_long() -> None:
    reader = fed(b"250-" + b"x" * 100 + b"\r\n" + b"250-more\r\n" * 4000)

    with pytest.raises(SMTPResponseException, match="too long"):
        await reader.next(1.0)


async def test_no_reply_within_the_limit_is_a_read_timeout() -> None:
    reader = fed(b"250 O")

    with pytest.raises(SMTPReadTimeoutError):
        await reader.next(0.01)


async def test_a_lost_connection_wakes_the_wait() -> None:
    reader = ReplyReader()
    waiting = asyncio.create_task(reader.next(5.0))
    await asyncio.sleep(0)
    reader.connection_lost(ConnectionResetError("reset by peer"))

    with pytest.raises(SMTPServerDisconnected, match="reset by peer"):
        await waiting


def test_text_that_is_not_utf8_is_kept_as_aiosmtplib_keeps_it() -> None:
    reader = fed(b"550 caf\xe9\r\n")

    reply = asyncio.run(reader.next(1.0))

    assert reply.message == "caf\udce9"
