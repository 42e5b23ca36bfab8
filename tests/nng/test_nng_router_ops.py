"""The reading of ops and batching of frames, against their plain rules: the router's
checks of a ``pub`` op and a client's of ``job``, ``msg`` and ``puback`` ops, by class in
one go (the field helpers when a check fails), and the packet bytes a frame takes out of
an outbox."""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import cbor2
import pytest
from nng_waits import WAIT

from cordtrio.backends.nng import open_nng_bus, open_nng_router
from cordtrio.backends.nng._common import BATCH_BYTES, take_counted_frame, take_frame
from cordtrio.backends.nng.frames import FrameError, bytes_field, int_field, op_name, str_field
from cordtrio.backends.nng.router_ops import packet_field
from cordtrio.backends.nng.table import _Peer
from cordtrio.protocol import SUBJECT_RESULT

ABSENT = object()
MAP = cbor2.dumps({"trace_id": "t"})


def plain_pub_checks(op: Any) -> None:
    """What a ``pub`` op must be, field by field, in the order the router checks it."""
    op_name(op)
    int_field(op, "pid")
    subject = str_field(op, "subject", empty=False)
    packet_field(op)
    job_id = str_field(op, "jid", default="") if "jid" in op else ""
    if "ack" in op and job_id and subject == SUBJECT_RESULT:
        int_field(op, "ack")


def pub_ops() -> list[dict[str, Any]]:
    choices = {
        "pid": [1, True, "1", None, 1.0, ABSENT],
        "subject": ["s", SUBJECT_RESULT, "", 5, None, ABSENT],
        "packet": [MAP, b"", b"\x01x", "text", bytearray(MAP), ABSENT],
        "jid": ["j", "", 5, None, ABSENT],
        "ack": [3, None, "x", True, ABSENT],
    }
    ops = []
    for values in itertools.product(*choices.values()):
        op = {"op": "pub"}
        op.update((k, v) for k, v in zip(choices, values, strict=True) if v is not ABSENT)
        ops.append(op)
    return ops


async def test_a_pub_op_is_refused_with_the_field_helpers_message(url: str) -> None:
    async with open_nng_router(url) as router:
        peer = _Peer(None, 1, 1, 0.0)  # type: ignore[arg-type]  # nothing is sent to it
        refused = 0
        for op in pub_ops():
            try:
                plain_pub_checks(op)
            except FrameError as exc:
                with pytest.raises(FrameError) as got:
                    router._ops._on_op(peer, op)
                assert str(got.value) == str(exc), op
                refused += 1
        assert refused > 3000


@pytest.mark.parametrize("op", [None, 5, [], {"pid": 1}, {"op": 7}, {"op": None}, {"op": "x"}])
async def test_an_op_without_a_known_name_is_refused_as_op_name_says(url: str, op: Any) -> None:
    async with open_nng_router(url) as router:
        peer = _Peer(None, 1, 1, 0.0)  # type: ignore[arg-type]
        with pytest.raises(FrameError) as got:
            router._ops._on_op(peer, op)
        try:
            expected = f"unknown op {op_name(op)!r}"
        except FrameError as exc:
            expected = str(exc)
        assert str(got.value) == expected


def plain_take_frame(outbox: deque[Any], first: list[Any]) -> tuple[list[Any], int]:
    ops, size = list(first), 0
    while outbox and size < BATCH_BYTES:
        op = outbox.popleft()
        ops.append(op)
        packet = op.get("packet")
        size += 32 + (len(packet) if isinstance(packet, bytes) else 0)
    return ops, sum(len(op["packet"]) for op in ops if isinstance(op.get("packet"), bytes))


@pytest.mark.parametrize("sizes", [[], [0], [10, 20], [BATCH_BYTES - 40, 1, 1],
                                   [BATCH_BYTES // 3] * 7, [None, 5, None] * 3])
def test_a_frame_takes_the_ops_and_counts_the_packet_bytes_of_the_plain_rule(
    sizes: list[int | None]
) -> None:
    ops = [{"op": "msg", "sid": i} if n is None else {"op": "job", "cid": i, "packet": b"x" * n}
           for i, n in enumerate(sizes)]
    first = [{"op": "credit", "conn": 1, "n": 2}]
    outbox, plain_outbox = deque(ops), deque(ops)
    while outbox or plain_outbox:
        frame, packet_bytes = take_frame(outbox, list(first))
        expected_ops, expected_bytes = plain_take_frame(plain_outbox, first)
        assert cbor2.loads(frame) == expected_ops
        assert packet_bytes == expected_bytes
        assert len(outbox) == len(plain_outbox)


@pytest.mark.parametrize("sizes", [[], [0], [10, 20], [BATCH_BYTES - 40, 1, 1],
                                   [BATCH_BYTES - 100, 1], [BATCH_BYTES // 3] * 7,
                                   [None, 5, None] * 3])
def test_a_counted_frame_is_the_frame_take_frame_makes(sizes: list[int | None]) -> None:
    ops = [{"op": "msg", "sid": i} if n is None else {"op": "job", "cid": i, "packet": b"x" * n}
           for i, n in enumerate(sizes)]
    outbox, plain_outbox = deque(ops), deque(ops)
    counted = sum(n or 0 for n in sizes)
    while outbox or plain_outbox:
        frame, packet_bytes = take_counted_frame(outbox, counted)
        expected, expected_bytes = take_frame(plain_outbox)
        assert (frame, packet_bytes) == (expected, expected_bytes)
        assert list(outbox) == list(plain_outbox)
        counted -= packet_bytes


def plain_client_checks(op: Any) -> None:
    """What a client checks of the router's ``job``, ``msg`` and ``puback`` ops."""
    name = op_name(op)
    if name in ("job", "msg"):
        int_field(op, "cid" if name == "job" else "sid")
        bytes_field(op, "packet")
    elif name == "puback":
        int_field(op, "pid")


def router_ops_to_clients() -> list[Any]:
    ops: list[Any] = [None, 5, {"pid": 1}, {"op": 7}]
    for name, key in (("job", "cid"), ("msg", "sid"), ("puback", "pid")):
        for ident, packet in itertools.product([1, True, "1", None, ABSENT],
                                               [MAP, "text", bytearray(MAP), None, ABSENT]):
            op = {"op": name}
            op.update((k, v) for k, v in ((key, ident), ("packet", packet)) if v is not ABSENT)
            ops.append(op)
    return ops


async def test_a_client_refuses_the_routers_ops_with_the_field_helpers_message(
    url: str,
) -> None:
    async with open_nng_router(url) as router, \
            open_nng_bus(router.urls[0], connect_timeout=WAIT) as bus:
        refused = 0
        for op in router_ops_to_clients():
            try:
                plain_client_checks(op)
            except FrameError as exc:
                with pytest.raises(FrameError) as got:
                    bus._link._on_op(op)
                assert str(got.value) == str(exc), op
                refused += 1
        assert refused > 40
