"""The pyfuse3 adapter below a mount: errno mapping and waiting for a commit without a
thread (the core's committer wakes the event loop)."""

from __future__ import annotations

import errno
import logging
import threading

import pyfuse3
import pytest
import trio

from worm_fs.core.committer import Ticket
from worm_fs.errors import NoSpace, Refused
from worm_fs.fuse_ops import _committed_ticket, _guard


@_guard
async def raises(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize("exc, expected", [
    (Refused("no", errno=errno.EEXIST), errno.EEXIST),
    (NoSpace(), errno.ENOSPC),
    (pyfuse3.FUSEError(errno.ENOTDIR), errno.ENOTDIR),
])
async def test_product_errors_become_their_errno(exc: BaseException, expected: int) -> None:
    with pytest.raises(pyfuse3.FUSEError) as got:
        await raises(exc)
    assert got.value.errno == expected


async def test_a_bug_is_eio_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(pyfuse3.FUSEError) as got:
        await raises(KeyError("surprise"))
    assert got.value.errno == errno.EIO
    assert any(r.exc_info and "raises" in r.getMessage() for r in caplog.records)


async def test_a_ticket_resolved_by_another_thread_wakes_the_loop() -> None:
    ticket = Ticket()
    timer = threading.Timer(0.05, ticket._resolve)
    timer.start()
    with trio.fail_after(10):
        await _committed_ticket(ticket)
    assert ticket.done
    timer.join()


async def test_an_already_resolved_ticket_does_not_wait() -> None:
    ticket = Ticket()
    ticket._resolve()
    with trio.fail_after(1):
        await _committed_ticket(ticket)
