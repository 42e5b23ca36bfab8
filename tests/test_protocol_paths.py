"""The packet codec's generated per-class code against its plain rules (cordtrio.protocol,
cordtrio.codec_fields, cordtrio.codec_shapes).

Encoding and decoding run straight-line code generated once per payload class; decoding
hands any map it does not take as usual to the field-by-field walk, and reads the envelope
``encode_packet`` writes in one call. Each must give exactly what the plain rule gives, for
any value in any field: the same wire map (keys, order, value classes), the same packet,
or the same ``ProtocolError`` message.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from datetime import UTC
from enum import IntEnum
from operator import attrgetter
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cordtrio.codec_fields import _PLANS, _from_plain, _to_plain, _walk
from cordtrio.errors import ProtocolError
from cordtrio.protocol import (
    ActorType,
    Budget,
    BusPacket,
    Heartbeat,
    JobCancel,
    JobMetadata,
    JobPriority,
    JobProgress,
    JobRequest,
    JobResult,
    JobStatus,
    SystemAlert,
    decode_packet,
    encode_packet,
)

PAYLOAD_CLASSES = [JobRequest, JobResult, JobCancel, JobProgress, SystemAlert, Heartbeat]
DOCUMENT_CLASSES = [*PAYLOAD_CLASSES, Budget, JobMetadata]
ENUM_MEMBERS = [*JobStatus, *JobPriority, *ActorType]
PLAIN_TYPES = frozenset({str, int, float, bool, type(None), dict, list})


class Flag(IntEnum):  # an IntEnum no field is declared with: kept when empty all the same
    OFF = 0


def plain_to_plain(obj: Any) -> dict[str, Any]:
    """The rule ``_to_plain`` follows, field by field: a value goes on the wire when it is
    truthy, ``False`` or an ``IntEnum``; a kept nested document as its own map."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value or value is False or (value.__class__ not in PLAIN_TYPES
                                       and isinstance(value, IntEnum)):
            out[f.name] = value
    for name in ("budget", "meta"):
        if isinstance(obj, JobRequest) and out.get(name) is not None:
            out[name] = plain_to_plain(out[name])
    return out


def same_items(a: Any, b: Any) -> bool:
    """Equal, in the same order, with values of the same classes (what cbor2 writes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_items(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same_items, a, b))
    if hasattr(a, "__dataclass_fields__"):
        return all(same_items(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    return bool(a == b)


texts = st.text(max_size=3)
any_value = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.floats(allow_nan=False), st.just(0.0),
    texts, st.binary(max_size=2), st.sampled_from([*ENUM_MEMBERS, Flag.OFF]),
    st.dictionaries(texts, texts, max_size=2), st.lists(texts, max_size=2),
    st.lists(st.integers(), max_size=1), st.tuples(),
    st.builds(Budget, deadline_ms=st.integers(0, 2)),
    st.builds(JobMetadata, actor_type=st.sampled_from(ActorType)),
)


def documents(cls: type) -> st.SearchStrategy[Any]:
    return st.builds(cls, **{f.name: any_value for f in fields(cls)})


any_document = st.one_of([documents(cls) for cls in DOCUMENT_CLASSES])


@given(any_document)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_wire_map_is_the_field_by_field_one_for_any_values(doc: Any) -> None:
    # twice: a value of a shape met for the first time goes field by field, then by its
    # shape (``codec_shapes``)
    for _ in range(2):
        try:
            expected = plain_to_plain(doc)
        except Exception as exc:  # a nested value that is no document: the same error
            try:
                _to_plain(doc)
            except Exception as got:
                assert type(got) is type(exc) and str(got) == str(exc)
            else:
                raise AssertionError("_to_plain took what the plain rule refuses") from None
            continue
        assert same_items(_to_plain(doc), expected)


def test_the_usual_shapes_are_learnt_and_taken_by_shape() -> None:
    result = JobResult("r:s@1", JobStatus.SUCCEEDED, "res:r:s@1", "w", 3)
    request = JobRequest("r:s@1", "t", env={"a": "b"}, labels={"c": "d"},
                         budget=Budget(deadline_ms=5))
    for doc in (result, request, JobResult("r:s@1", JobStatus.FAILED, error_code="E")):
        encode, decode = _PLANS[type(doc)].encode, _PLANS[type(doc)].decode
        encode.shapes.clear()  # type: ignore[attr-defined]
        decode.shapes.clear()  # type: ignore[attr-defined]
        for _ in range(2):
            wire = _to_plain(doc)
            assert same_items(wire, plain_to_plain(doc))
            assert same_items(_from_plain(type(doc), wire, "where"), doc)
        assert tuple(map(type, attrgetter(*(f.name for f in fields(doc)))(doc))) \
            in encode.shapes  # type: ignore[attr-defined]
        assert len(decode.shapes) == 1  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ decoding

FIELD_NAMES = sorted({f.name for cls in DOCUMENT_CLASSES for f in fields(cls)})
wire_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12), st.integers(), st.floats(allow_nan=False),
    texts, st.binary(max_size=2),
)
wire_values = st.recursive(
    wire_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.lists(texts, max_size=3),
        st.dictionaries(texts, texts, max_size=3),
        st.dictionaries(st.sampled_from(FIELD_NAMES) | texts | st.integers(0, 2), children,
                        max_size=4),
    ),
    max_leaves=8,
)
wire_maps = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.sampled_from(["x", ""])
                            | st.integers(0, 1), wire_values, max_size=8)


def decoded_or_error(decode: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", decode(*args)
    except ProtocolError as exc:
        return "error", str(exc)


@given(st.sampled_from(DOCUMENT_CLASSES), wire_maps)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_wire_map_decodes_as_the_field_by_field_walk_decodes_it(
    cls: type, data: dict[Any, Any]
) -> None:
    before = copy.deepcopy(data)
    expected = decoded_or_error(_walk, cls, data, "where")
    for _ in range(2):  # field by field for a new shape, then by its shape
        got = decoded_or_error(_from_plain, cls, data, "where")
        assert data == before  # the decoded map is left as it was
        assert got[0] == expected[0]
        assert same_items(got[1], expected[1]) if got[0] == "ok" else got[1] == expected[1]


ON_THE_WIRE: dict[type, st.SearchStrategy[Any]] = {
    # documents as the engine and workers send them: well typed, enums as members
    JobRequest: st.builds(JobRequest, job_id=texts, priority=st.sampled_from(JobPriority),
                          env=st.dictionaries(texts, texts, max_size=2),
                          step_index=st.integers(), labels=st.dictionaries(texts, texts),
                          budget=st.none() | st.builds(Budget, deadline_ms=st.integers()),
                          meta=st.none() | st.builds(
                              JobMetadata, actor_type=st.sampled_from(ActorType),
                              risk_tags=st.lists(texts, max_size=2))),
    JobResult: st.builds(JobResult, job_id=texts, status=st.sampled_from(JobStatus),
                         execution_ms=st.integers(), artifact_ptrs=st.lists(texts)),
    Heartbeat: st.builds(Heartbeat, cpu_load=st.floats(allow_nan=False).filter(bool),
                         labels=st.dictionaries(texts, texts, max_size=2)),
}


def one_value_changed(cls: type) -> st.SearchStrategy[tuple[type, dict[str, Any], Any]]:
    """A map ``encode_packet`` writes for ``cls`` (the short way's usual input), and the
    same map with one field's value replaced by anything."""
    names = [f.name for f in fields(cls)]
    return st.tuples(st.just(cls), ON_THE_WIRE[cls].map(_to_plain),
                     st.tuples(st.sampled_from(names), wire_values))


@given(st.sampled_from(sorted(ON_THE_WIRE, key=str)).flatmap(one_value_changed))
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_usual_map_with_one_value_changed_decodes_as_the_walk_decodes_it(
    case: tuple[type, dict[str, Any], tuple[str, Any]]
) -> None:
    cls, data, (name, value) = case
    for changed in (data, {**data, name: value}, data, {**data, name: value}):
        got = decoded_or_error(_from_plain, cls, changed, "where")
        expected = decoded_or_error(_walk, cls, changed, "where")
        assert got[0] == expected[0]
        assert same_items(got[1], expected[1]) if got[0] == "ok" else got[1] == expected[1]


# ------------------------------------------------------------------------------ envelope


def plain_envelope(body: dict[Any, Any]) -> tuple[str, Any]:
    """``decode_packet``'s envelope checks one by one (a missing key takes its default)."""
    trace_id = body.get("trace_id", "") or ""
    sender_id = body.get("sender_id", "") or ""
    version = body.get("protocol_version", 1)
    if not isinstance(trace_id, str) or not isinstance(sender_id, str):
        return "error", "decode_packet: trace_id/sender_id must be strings"
    if not isinstance(version, int) or isinstance(version, bool):
        return "error", "decode_packet: protocol_version must be an integer"
    return "ok", (trace_id, sender_id, version)


envelope_values = st.one_of(st.none(), st.booleans(), st.integers(-1, 2), texts,
                            st.lists(texts, max_size=1), st.just(0.0))


@given(st.fixed_dictionaries({}, optional={
    "trace_id": envelope_values, "sender_id": envelope_values,
    "created_at": st.none() | st.sampled_from(["2030-01-01T00:00:00Z", "x", ""]),
    "protocol_version": envelope_values,
    "job_cancel": st.just({"job_id": "j"}),
}))
@settings(max_examples=800, deadline=None)
def test_the_envelope_is_read_as_checked_one_by_one(body: dict[str, Any]) -> None:
    expected = plain_envelope(body)
    got = decoded_or_error(decode_packet, cbor2.dumps(body))
    if expected[0] == "error":
        assert got == expected
    elif got[0] == "ok":
        packet = got[1]
        assert (packet.trace_id, packet.sender_id, packet.protocol_version) == expected[1]
        assert same_items(packet.trace_id, expected[1][0])
    else:  # only the time may be wrong then
        assert got[1].startswith("decode_packet: created_at")


@given(st.sampled_from(sorted(ON_THE_WIRE, key=str)).flatmap(ON_THE_WIRE.__getitem__),
       st.datetimes(timezones=st.just(UTC)) | st.none())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_usual_packets_round_trip_with_enum_members_and_nested_documents(
    payload: Any, when: Any
) -> None:
    packet = BusPacket("t", "s", when, 1, payload)
    got = decode_packet(encode_packet(packet))
    assert same_items(got, packet)
