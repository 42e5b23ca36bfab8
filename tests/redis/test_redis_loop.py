"""The trio-asyncio loop the Redis adapter runs on, as tuned (``loop_tuning.py``): every
ready callback in one Trio tick, asyncio timers on time, large payloads through the socket
whole, callbacks checked as asyncio checks them."""

from __future__ import annotations

import pytest
import trio

from cordtrio.backends.redis import RedisBackends

DEADLINE = 20


async def test_the_loop_runs_every_ready_callback_in_one_tick(redis: RedisBackends) -> None:
    loop = redis.redis.loop
    ran: list[int] = []
    for i in range(200):
        loop.call_soon(ran.append, i)
    for _ in range(5):  # one-callback-per-tick would need 200 scheduler rounds
        await trio.lowlevel.checkpoint()
    assert ran == list(range(200))


async def test_a_due_timer_runs_once_the_ready_callbacks_ran(redis: RedisBackends) -> None:
    """The loop stops draining when its queue is empty (no exception per tick); a timer
    already due then runs at its next turn, without waiting for another callback."""
    loop = redis.redis.loop
    ran: list[str] = []
    loop.call_at(loop.time() - 1, ran.append, "timer")
    for i in range(3):
        loop.call_soon(ran.append, f"soon-{i}")
    for _ in range(5):
        await trio.lowlevel.checkpoint()
    assert sorted(ran) == ["soon-0", "soon-1", "soon-2", "timer"]
    assert [r for r in ran if r != "timer"] == ["soon-0", "soon-1", "soon-2"]


async def test_asyncio_timers_run_when_due_while_the_loop_waits(
        fake_redis: RedisBackends, autojump_clock: trio.testing.MockClock) -> None:
    """The loop waits for its next callback without a deadline of its own: its asyncio
    timers still run when due, earliest first, though a later timer (the batcher's reply
    timeout, 30 s) was armed before them."""
    loop = fake_redis.redis.loop
    await fake_redis.payloads.put_result("res:timer", b"t")  # a round trip: its watch armed
    start = trio.current_time()
    fired: list[float] = []
    done = trio.Event()

    def fire() -> None:
        fired.append(trio.current_time() - start)
        if len(fired) == 2:
            done.set()

    loop.call_later(2.0, fire)
    loop.call_later(1.0, fire)
    with trio.fail_after(10):
        await done.wait()
    assert fired == [pytest.approx(1.0), pytest.approx(2.0)]
    assert await fake_redis.payloads.get_result("res:timer") == b"t"  # and calls go on


async def test_payloads_larger_than_the_socket_buffers_arrive_whole(
        redis: RedisBackends) -> None:
    """Writes and replies of several MiB each, several at once, cross the socket in many
    reads and writes (the loop's readers and writers called again as the socket stays
    ready): each caller gets back exactly what it stored."""
    payloads = redis.payloads
    blobs = {f"res:big-{i}": bytes([65 + i]) * (3 * 1024 * 1024 + i) for i in range(4)}
    got: dict[str, bytes] = {}

    async def round_trip(key: str) -> None:
        await payloads.put_result(key, blobs[key])
        got[key] = await payloads.get_result(key)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for key in blobs:
                nursery.start_soon(round_trip, key)
    assert got == blobs


async def test_the_loop_checks_callbacks_as_asyncio_does_outside_debug_mode(
        redis: RedisBackends) -> None:
    loop = redis.redis.loop
    assert not loop.get_debug()
    with pytest.raises(TypeError, match="callable"):
        loop.call_soon(5)

    async def coroutine_function() -> None: ...

    # refused by trio-asyncio's own check, accepted (unchecked) by asyncio outside debug mode
    loop.call_soon(coroutine_function).cancel()
    ran = trio.Event()
    loop.call_soon(ran.set)  # and callbacks still run
    with trio.fail_after(DEADLINE):
        await ran.wait()
