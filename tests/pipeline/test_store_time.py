"""A store's timeout counts the store's time, not the time the event loop was busy elsewhere."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.pipeline.quota import within_store_time


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A real TCP server on loopback that answers each line at once (a healthy store)."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


async def _ask(port: int, block_loop_for: float) -> bytes:
    """Send a line and, while the reply is on its way, block the loop (the busy gateway). The reply
    is read by a connection task that hands it over through a future a few turns of the loop later,
    as a Redis client's reader, parser and response future do."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def connection() -> None:
        line = await reader.readline()
        for _ in range(3):
            await asyncio.sleep(0)
        answer.set_result(line)

    task = asyncio.create_task(connection())
    try:
        writer.write(b"ping\n")
        await writer.drain()
        asyncio.get_running_loop().call_soon(time.sleep, block_loop_for)
        return await answer
    finally:
        task.cancel()
        writer.close()


def test_a_reply_that_came_while_the_loop_was_busy_is_not_a_store_failure(echo_port: int) -> None:
    async def both() -> tuple[bool, bytes]:
        try:
            await asyncio.wait_for(_ask(echo_port, 0.4), 0.1)
            clock_timed_out = False
        except TimeoutError:
            clock_timed_out = True
        return clock_timed_out, await within_store_time(_ask(echo_port, 0.4), 0.1)

    clock_timed_out, reply = asyncio.run(both())
    assert clock_timed_out  # what refused calls before: the clock ran while the loop was blocked
    assert reply == b"ping\n"


def test_a_store_that_does_not_answer_still_fails() -> None:
    async def silent() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        asyncio.run(within_store_time(silent(), 0.2))


def test_the_call_is_cancelled_with_its_caller() -> None:
    started, cancelled = asyncio.Event(), []

    async def store() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def caller() -> None:
        task = asyncio.create_task(within_store_time(store(), 30))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)

    asyncio.run(caller())
    assert cancelled == [True]
