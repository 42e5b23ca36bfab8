"""The CBOR wire codec of bus packets (cordtrio.protocol)."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cordtrio.errors import ProtocolError
from cordtrio.fields import timestamp_text
from cordtrio.protocol import (
    PROTOCOL_VERSION,
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
from cordtrio.timeutil import format_ts, parse_ts

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

FULL_PAYLOADS: list[Any] = [
    JobRequest(
        job_id="run-1:resize@2",
        topic="job.images.resize",
        priority=JobPriority.CRITICAL,
        context_ptr="redis://ctx:run-1:resize@2",
        adapter_id="w1",
        env={"run_id": "run-1", "foreach_item": '{"a": 1}'},
        parent_job_id="p",
        workflow_id="wf",
        step_index=3,
        memory_id="run:run-1",
        budget=Budget(max_input_tokens=1, max_output_tokens=2, max_total_tokens=3,
                      deadline_ms=4000),
        tenant_id="org",
        principal_id="alice",
        labels={"step_id": "resize"},
        meta=JobMetadata(tenant_id="org", actor_id="alice", actor_type=ActorType.HUMAN,
                         idempotency_key="k", capability="c", risk_tags=["pii"],
                         requires=["gpu"], pack_id="pk", labels={"a": "b"}),
    ),
    JobResult(job_id="run-1:resize@2", status=JobStatus.FAILED, result_ptr="redis://res:x",
              worker_id="w1", execution_ms=12, error_code="ValueError",
              error_message="bad width", artifact_ptrs=["redis://a", "redis://b"]),
    JobCancel(job_id="run-1:resize@2", reason="workflow run cancelled",
              requested_by="workflow-engine"),
    JobProgress(job_id="j", percent=40, message="m", result_ptr="redis://r",
                artifact_ptrs=["x"], status=JobStatus.RUNNING),
    SystemAlert(level="WARN", message="disk", component="workflow-engine", code="D1"),
    Heartbeat(worker_id="w1", region="eu", type="cpu", cpu_load=0.5, gpu_utilization=12.25,
              active_jobs=3, capabilities=["resize"], pool="p", max_parallel_jobs=8,
              labels={"zone": "a"}),
]


def full_packet(payload: Any) -> BusPacket:
    return BusPacket(trace_id="run-1", sender_id="workflow-engine", created_at=T0,
                     protocol_version=PROTOCOL_VERSION, payload=payload)


def body(**fields: Any) -> bytes:
    return cbor2.dumps(fields)


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("payload", FULL_PAYLOADS, ids=lambda p: type(p).__name__)
def test_every_payload_type_round_trips_with_every_field_set(payload: Any) -> None:
    p = full_packet(payload)
    assert decode_packet(encode_packet(p)) == p


@pytest.mark.parametrize("payload_type",
                         [JobRequest, JobResult, JobCancel, JobProgress, SystemAlert, Heartbeat])
def test_every_payload_type_round_trips_with_defaults(payload_type: type) -> None:
    p = BusPacket(payload=payload_type())
    assert decode_packet(encode_packet(p)) == p


def test_a_packet_without_payload_round_trips() -> None:
    p = BusPacket(trace_id="t", sender_id="s", created_at=T0)
    got = decode_packet(encode_packet(p))
    assert got == p and got.payload is None


def test_enums_decode_as_enums() -> None:
    got = decode_packet(encode_packet(full_packet(FULL_PAYLOADS[0])))
    assert isinstance(got.payload, JobRequest)
    assert got.payload.priority is JobPriority.CRITICAL
    assert got.payload.meta is not None and got.payload.meta.actor_type is ActorType.HUMAN
    result = decode_packet(encode_packet(BusPacket(payload=JobResult(status=JobStatus.TIMEOUT))))
    assert isinstance(result.payload, JobResult) and result.payload.status is JobStatus.TIMEOUT


def test_created_at_is_utc_and_non_utc_offsets_are_normalised() -> None:
    plus2 = timezone(timedelta(hours=2))
    p = BusPacket(created_at=datetime(2030, 1, 1, 12, tzinfo=plus2))
    got = decode_packet(encode_packet(p))
    assert got.created_at == datetime(2030, 1, 1, 10, tzinfo=UTC)
    assert got.created_at is not None and got.created_at.utcoffset() == timedelta(0)


def test_the_wire_form_is_a_cbor_map_keyed_by_payload_tag() -> None:
    raw = cbor2.loads(encode_packet(full_packet(JobCancel(job_id="j"))))
    assert raw["trace_id"] == "run-1"
    assert raw["created_at"] == "2030-01-02T03:04:05.678901Z"
    assert raw["job_cancel"] == {"job_id": "j"}  # empty fields are left out


# ------------------------------------------------------------------- forward compatibility


def test_unknown_fields_are_ignored_at_every_level() -> None:
    data = body(trace_id="t", protocol_version=2, future={"x": [1, 2]},
                job_result={"job_id": "j", "status": 5, "new_field": 1.5,
                            "nested_new": {"a": None}},
                extension_payload={"whatever": True})
    got = decode_packet(data)
    assert got.trace_id == "t" and got.protocol_version == 2
    assert got.payload == JobResult(job_id="j", status=JobStatus.SUCCEEDED)


def test_unknown_fields_in_nested_messages_are_ignored() -> None:
    got = decode_packet(body(job_request={"job_id": "j", "budget": {"deadline_ms": 5, "x": 1},
                                          "meta": {"actor_id": "a", "y": [1]}}))
    assert isinstance(got.payload, JobRequest)
    assert got.payload.budget == Budget(deadline_ms=5)
    assert got.payload.meta == JobMetadata(actor_id="a")


def test_an_unknown_enum_number_is_kept_as_an_int() -> None:
    got = decode_packet(body(job_result={"job_id": "j", "status": 42}))
    assert isinstance(got.payload, JobResult)
    assert got.payload.status == 42
    assert decode_packet(encode_packet(got)) == got


def test_float_fields_accept_integers() -> None:
    got = decode_packet(body(heartbeat={"cpu_load": 1, "gpu_utilization": 0.5}))
    assert got.payload == Heartbeat(cpu_load=1, gpu_utilization=0.5)


def test_missing_fields_take_their_defaults() -> None:
    got = decode_packet(body())
    assert got == BusPacket(protocol_version=PROTOCOL_VERSION)


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xff",
        b"not cbor at all",
        cbor2.dumps([1, 2, 3]),
        cbor2.dumps("a string"),
        body(trace_id=5),
        body(sender_id=["x"]),
        body(protocol_version="1"),
        body(protocol_version=True),
        body(created_at="yesterday"),
        body(created_at=12345),
        body(job_result="not a map"),
        body(job_result={"status": "SUCCEEDED"}),
        body(job_result={"status": True}),
        body(job_result={"job_id": 7}),
        body(job_result={"artifact_ptrs": "x"}),
        body(job_result={"artifact_ptrs": [1]}),
        body(job_request={"env": {"k": 1}}),
        body(job_request={"budget": "soon"}),
        body(job_request={"budget": {"deadline_ms": "5"}}),
        body(job_request={"meta": {"actor_type": "human"}}),
        body(heartbeat={"cpu_load": "high"}),
        body(job_request={"step_index": 1.5}),
        body(job_result={"execution_ms": 2.0}),
        body(job_request={"budget": {"deadline_ms": 0.5}}),
        body(job_result={}, job_cancel={}),
    ],
)
def test_malformed_packets_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_packet(data)


@pytest.mark.parametrize("data", [None, "text", 5, [b"x"]])
def test_decoding_something_that_is_not_bytes_raises_protocol_error(data: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_packet(data)


def test_bytearray_and_memoryview_are_accepted() -> None:
    raw = encode_packet(full_packet(JobCancel(job_id="j")))
    assert decode_packet(bytearray(raw)) == decode_packet(memoryview(raw)) == decode_packet(raw)


def test_encoding_something_that_is_not_a_packet_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        encode_packet({"trace_id": "t"})  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        encode_packet(BusPacket(payload="not a payload"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

texts = st.text(max_size=20)
str_maps = st.dictionaries(texts, texts, max_size=3)
str_lists = st.lists(texts, max_size=3)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)

payloads = st.one_of(
    st.builds(
        JobRequest, job_id=texts, topic=texts, priority=st.sampled_from(JobPriority),
        context_ptr=texts, adapter_id=texts, env=str_maps, parent_job_id=texts,
        workflow_id=texts, step_index=ints, memory_id=texts,
        budget=st.none() | st.builds(Budget, max_input_tokens=ints, max_output_tokens=ints,
                                     max_total_tokens=ints, deadline_ms=ints),
        tenant_id=texts, principal_id=texts, labels=str_maps,
        meta=st.none() | st.builds(JobMetadata, tenant_id=texts, actor_id=texts,
                                   actor_type=st.sampled_from(ActorType), risk_tags=str_lists,
                                   requires=str_lists, labels=str_maps),
    ),
    st.builds(JobResult, job_id=texts, status=st.sampled_from(JobStatus), result_ptr=texts,
              worker_id=texts, execution_ms=ints, error_code=texts, error_message=texts,
              artifact_ptrs=str_lists),
    st.builds(JobCancel, job_id=texts, reason=texts, requested_by=texts),
    st.builds(JobProgress, job_id=texts, percent=ints, message=texts,
              status=st.sampled_from(JobStatus), artifact_ptrs=str_lists),
    st.builds(SystemAlert, level=texts, message=texts, component=texts, code=texts),
    st.builds(Heartbeat, worker_id=texts, cpu_load=floats, gpu_utilization=floats,
              active_jobs=ints, capabilities=str_lists, labels=str_maps),
)
packets = st.builds(
    BusPacket, trace_id=texts, sender_id=texts,
    created_at=st.none() | st.datetimes(timezones=st.just(UTC)),
    protocol_version=ints, payload=st.none() | payloads,
)


@given(packets)
@settings(max_examples=300, deadline=None)
def test_any_packet_round_trips(p: BusPacket) -> None:
    assert decode_packet(encode_packet(p)) == p


def _decodes_or_protocol_error(data: bytes) -> None:
    try:
        got = decode_packet(data)
    except ProtocolError:
        return
    assert isinstance(got, BusPacket)


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_bytes_decode_or_raise_protocol_error_only(data: bytes) -> None:
    _decodes_or_protocol_error(data)


@given(packets, st.data())
@settings(max_examples=300, deadline=None)
def test_corrupted_packets_decode_or_raise_protocol_error_only(
    p: BusPacket, data: st.DataObject
) -> None:
    raw = bytearray(encode_packet(p))
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _decodes_or_protocol_error(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))


FIELD_NAMES = sorted(
    {"trace_id", "sender_id", "created_at", "protocol_version", "job_request", "job_result",
     "job_cancel", "job_progress", "alert", "heartbeat", "job_id", "status", "priority",
     "budget", "meta", "env", "labels", "actor_type", "deadline_ms", "artifact_ptrs",
     "cpu_load", "risk_tags", "step_index"}
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.binary(max_size=10), st.datetimes(timezones=st.just(UTC)),
    st.sampled_from(["2030-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-01:00", "", "Z"]),
)
cbor_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=5) | st.integers(),
                        children, max_size=5),
        st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 4, 5, 30, 37, 258, 999]),
                  children),
    ),
    max_leaves=20,
)


@given(cbor_values)
@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_cbor_values_decode_or_raise_protocol_error_only(value: Any) -> None:
    try:
        data = cbor2.dumps(value)
    except Exception:  # a value cbor2 itself refuses to encode: nothing to test
        return
    _decodes_or_protocol_error(data)


@given(st.fixed_dictionaries({}, optional={
    "trace_id": cbor_values, "created_at": cbor_values, "protocol_version": cbor_values,
    "job_request": cbor_values, "job_result": cbor_values, "heartbeat": cbor_values,
}))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_packet_shaped_maps_decode_or_raise_protocol_error_only(value: dict[str, Any]) -> None:
    try:
        data = cbor2.dumps(value)
    except Exception:
        return
    _decodes_or_protocol_error(data)


# ----------------------------------------------- the codec's shortcuts, against the plain path


def _plain_encode(packet: BusPacket) -> bytes:
    """``encode_packet`` written the plain way: every field of the dataclass in order,
    empty ones left out, ``IntEnum`` values as numbers, nested documents as maps."""
    def plain(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.name in ("budget", "meta"):
                if value is not None:
                    out[f.name] = plain(value)
            elif isinstance(value, IntEnum):
                out[f.name] = int(value)
            elif value or value is False:
                out[f.name] = value
        return out

    body: dict[str, Any] = {"trace_id": packet.trace_id, "sender_id": packet.sender_id,
                            "created_at": format_ts(packet.created_at),
                            "protocol_version": packet.protocol_version}
    if packet.payload is not None:
        tag = {JobRequest: "job_request", JobResult: "job_result", JobCancel: "job_cancel",
               JobProgress: "job_progress", SystemAlert: "alert",
               Heartbeat: "heartbeat"}[type(packet.payload)]
        body[tag] = plain(packet.payload)
    return cbor2.dumps(body)


@given(packets)
@settings(max_examples=300, deadline=None)
def test_encoding_gives_the_bytes_of_the_plain_field_walk(p: BusPacket) -> None:
    assert encode_packet(p) == _plain_encode(p)


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)),
                                               timezone(timedelta(hours=-5, minutes=-30))])),
       st.booleans())
@settings(max_examples=200, deadline=None)
def test_created_at_is_written_as_format_ts_writes_it_whether_or_not_its_text_is_cached(
    when: datetime, cached: bool
) -> None:
    if cached:  # the engine's step write formats the time it stamps its job requests with
        timestamp_text(when.astimezone(UTC))
    raw = cbor2.loads(encode_packet(BusPacket(created_at=when)))
    assert raw["created_at"] == format_ts(when)


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))]))
       .map(lambda d: d.isoformat().replace("+00:00", "Z"))
       | st.sampled_from(["2030-01-01", "2030-01-01T00:00:00", "2030-01-01T00:00:00z",
                          " 2030-01-01T00:00:00Z", "2030-01-01T00:00:00.5Z", "Z", "",
                          "2030-01-01T00:00:00+00:00", "yesterday"])
       | st.text(max_size=30))
@settings(max_examples=300, deadline=None)
def test_created_at_decodes_as_parse_ts_reads_it(text: str) -> None:
    try:
        expected = parse_ts(text, field="created_at")
    except ValueError:
        with pytest.raises(ProtocolError):
            decode_packet(body(created_at=text))
        return
    got = decode_packet(body(created_at=text)).created_at
    assert got == expected
    assert got is None or got.tzinfo is UTC


def test_str_maps_and_lists_are_checked_key_by_key() -> None:
    for bad in ({"a": "b", "c": 1}, {1: "a"}, {"a": None}):
        with pytest.raises(ProtocolError):
            decode_packet(body(job_request={"env": bad}))
    with pytest.raises(ProtocolError):
        decode_packet(body(job_result={"artifact_ptrs": ["a", 2]}))
    got = decode_packet(body(job_request={"env": {}, "labels": {"a": "b"}}))
    assert got.payload == JobRequest(labels={"a": "b"})
