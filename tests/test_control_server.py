"""The control server's limits, on socket pairs in-process, with trio's mock clock.

Each test hands one end of a socketpair to ``ControlServer._connection`` (as the
listener would) and plays the client on the other; ``SO_PEERCRED`` then names this
process. ``MockClock(autojump_threshold=0)`` makes the deadlines deterministic.
"""

from __future__ import annotations

import json
import logging
import socket
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from worm_fs.audit.log import AuditLog
from worm_fs.control import server as control


class FakeDeletions:
    """What the server needs from ``Deletions`` for ``hello`` and refusal records."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.core = SimpleNamespace(log=SimpleNamespace(stamp=AuditLog("test").stamp,
                                                        note=self.records.append))

    def is_admin(self, who) -> bool:
        return False

    def list(self) -> list:
        return []


async def inline(handler, *args):
    return handler(*args)


def make_server(**kwargs) -> control.ControlServer:
    server = control.ControlServer(FakeDeletions(), on_removed=lambda removed: None, **kwargs)
    server.run_handler = inline  # no worker threads: the mock clock sees every wait
    return server


def run(test) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


async def connect(nursery: trio.Nursery, server: control.ControlServer,
                  admin: bool = False) -> trio.SocketStream:
    ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # answers fill it soon
    nursery.start_soon(server._connection, trio.SocketStream(theirs), admin)
    return trio.SocketStream(ours)


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """What the server sends until it closes (a reset after its data counts as a close:
    the server closed with bytes of ours unread)."""
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


async def exchange(stream: trio.SocketStream, message: dict) -> dict:
    await stream.send_all(json.dumps(message).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        assert chunk, "closed without an answer"
        data += chunk
    return json.loads(data)


HELLO = {"v": 1, "op": "hello"}


def test_a_message_trickled_a_byte_every_five_seconds_is_cut_off_at_ten() -> None:
    async def main() -> None:
        server = make_server()
        async with trio.open_nursery() as nursery:
            client = await connect(nursery, server)
            started = trio.current_time()

            async def trickle() -> None:
                try:
                    for byte in b'{"v": 1, "op": "hello", "pad": "' + b"x" * 200:
                        await client.send_all(bytes([byte]))
                        await trio.sleep(5)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            nursery.start_soon(trickle)
            answer = await read_to_end(client)
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        assert elapsed == pytest.approx(10, abs=0.5)
        reply = json.loads(answer)
        assert reply["ok"] is False and reply["errno"] == "ETIMEDOUT"
        assert reply["error"] == "no complete message within 10 seconds"
        assert server.active == {False: 0, True: 0} and not server.active_by_uid[False]

    run(main)


def test_each_message_gets_its_own_deadline_and_a_silent_connection_just_closes() -> None:
    async def main() -> None:
        server = make_server()
        async with trio.open_nursery() as nursery:
            client = await connect(nursery, server)
            for _ in range(3):
                await trio.sleep(9)  # each within 10 s of the previous answer
                assert (await exchange(client, HELLO))["ok"] is True
            started = trio.current_time()
            assert await read_to_end(client) == b""  # nothing begun: no error line
            assert trio.current_time() - started == pytest.approx(10, abs=0.5)

    run(main)


def test_an_answer_the_peer_does_not_take_is_given_up_after_the_reply_timeout() -> None:
    async def main() -> None:
        server = make_server()
        async with trio.open_nursery() as nursery:
            client = await connect(nursery, server)
            async def never_read() -> None:  # the answers fill the socket's buffers
                try:
                    await client.send_all((json.dumps(HELLO).encode() + b"\n") * 20_000)
                except trio.BrokenResourceError:
                    pass

            nursery.start_soon(never_read)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            while server.active[False]:
                await trio.sleep(0.1)
            assert trio.current_time() - started == pytest.approx(10,
                                                                   abs=0.5)

    run(main)


def test_one_uid_gets_at_most_eight_connections_per_socket() -> None:
    async def main() -> None:
        server = make_server()
        async with trio.open_nursery() as nursery:
            held = [await connect(nursery, server) for _ in range(8)]
            await trio.testing.wait_all_tasks_blocked()
            extra = await connect(nursery, server)
            reply = json.loads(await read_to_end(extra))
            assert reply["ok"] is False and reply["errno"] == "EBUSY" and reply["exit"] == 4
            assert reply["error"].startswith("too many control connections from uid ")
            assert "at most 8 at once" in reply["error"]
            # the other socket has its own count, and the held connections still work
            assert (await exchange(await connect(nursery, server, admin=True), HELLO))["ok"]
            assert all([(await exchange(c, HELLO))["ok"] for c in held])
            assert server.refusals.total == {"uid": 1}
            nursery.cancel_scope.cancel()

    run(main)


def test_the_total_cap_still_applies_across_uids() -> None:
    async def main() -> None:
        server = make_server(max_connections=3, max_per_uid=10)
        async with trio.open_nursery() as nursery:
            held = [await connect(nursery, server) for _ in range(3)]
            await trio.testing.wait_all_tasks_blocked()
            reply = json.loads(await read_to_end(await connect(nursery, server)))
            assert reply["errno"] == "EBUSY" and reply["error"] == (
                "too many control connections; try again")
            assert server.refusals.total == {"total": 1}
            assert (await exchange(held[0], HELLO))["ok"]
            nursery.cancel_scope.cancel()

    run(main)


def test_refusals_are_reported_once_then_in_aggregate_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=control.__name__)

    async def main() -> list[dict]:
        server = make_server(max_per_uid=1)
        records = server.deletions.records
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._report_loop)
            held = await connect(nursery, server)  # holds the uid's one slot
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(50):
                assert b"EBUSY" in await read_to_end(await connect(nursery, server))
            assert len(records) == 1 and records[0]["refused"] == 1  # the first, at once
            await trio.sleep(control.REPORT_INTERVAL + 1)
            assert len(records) == 2 and records[1]["refused"] == 49  # the rest, summed
            await trio.sleep(5 * control.REPORT_INTERVAL)
            assert len(records) == 2  # nothing more to say
            await held.aclose()
            nursery.cancel_scope.cancel()
        return records

    records: list[dict] = []

    async def capture() -> None:
        records.extend(await main())

    run(capture)
    assert {(r["op"], r["result"], r["socket"]) for r in records} == {
        ("control_connect", "EBUSY", "request.sock")}
    assert records[0]["reason"].startswith("more than 1 connections at once from uid ")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "refused 49 connection(s) to request.sock" in warnings[1]
