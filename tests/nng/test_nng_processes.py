"""The nng bus across real processes: two echo processes in one queue group.

The test process hosts the router; each child process dials it, joins queue group
``echo`` on ``ping`` and answers every ping on ``pong`` with its own name. Every ping must
be answered exactly once, and both processes must take a share.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator

import pynng  # noqa: F401  (a test dependency: missing means broken, not skipped)
import pytest
import trio

from cordtrio.backends.nng import open_nng_router
from cordtrio.protocol import BusPacket

ECHO = """
import sys, trio
from cordtrio.backends.nng import open_nng_bus
from cordtrio.protocol import BusPacket

async def main(url, name):
    async with open_nng_bus(url, connect_timeout=20) as bus:
        async with bus.subscribe("ping", queue="echo") as pings:
            await bus.publish("ready", BusPacket(trace_id=name, sender_id=name))
            async for ping in pings:
                await bus.publish("pong", BusPacket(trace_id=ping.trace_id, sender_id=name))

trio.run(main, sys.argv[1], sys.argv[2])
"""

PINGS = 40


@pytest.fixture
def ipc_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="cordtrio-nng-proc-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def test_one_of_n_delivery_across_two_worker_processes(ipc_dir: str) -> None:
    url = f"ipc://{ipc_dir}/bus.ipc"
    names = ["echo-a", "echo-b"]
    async with open_nng_router(url) as router, router.subscribe("ready") as ready, \
            router.subscribe("pong", max_buffer=PINGS) as pongs:
        procs = [
            await trio.lowlevel.open_process(
                [sys.executable, "-c", ECHO, url, name],
                stdout=subprocess.DEVNULL)  # stderr: inherited, captured by pytest
            for name in names
        ]
        try:
            with trio.fail_after(30):  # two interpreters importing cordtrio
                started = {(await ready.receive()).sender_id for _ in names}
            assert started == set(names)
            with trio.fail_after(20):
                for n in range(PINGS):
                    await router.publish("ping", BusPacket(trace_id=f"ping-{n}"))
                answers = [await pongs.receive() for _ in range(PINGS)]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            with trio.move_on_after(10):
                for proc in procs:
                    await proc.wait()
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
    assert Counter(p.trace_id for p in answers) == Counter(f"ping-{n}" for n in range(PINGS))
    by_process = Counter(p.sender_id for p in answers)
    assert set(by_process) == set(names), by_process  # one of N, over both processes
