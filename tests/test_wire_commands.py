"""Run commands as bytes for the per-run inboxes of multi-engine mode: every command that
crosses engines comes back equal, and malformed bytes raise ``ProtocolError``."""

from __future__ import annotations

import cbor2
import pytest

from cordtrio.core.events import (
    Approve,
    CancelRun,
    JobStarted,
    ResultReceived,
    Start,
    TimerFired,
    TimerKind,
)
from cordtrio.errors import ProtocolError
from cordtrio.protocol import JobResult, JobStatus
from cordtrio.wire_commands import decode_command, encode_command, is_wire_command


@pytest.mark.parametrize("event", [
    Start(),
    Approve("gate", approved=False),
    CancelRun("by the operator"),
    JobStarted("run-1:a@2"),
    ResultReceived(JobResult("run-1:a@2", JobStatus.FAILED, error_message="boom")),
])
def test_commands_round_trip(event) -> None:
    assert is_wire_command(event)
    assert decode_command(encode_command(event)) == event


def test_timers_do_not_travel() -> None:
    event = TimerFired(TimerKind.WAKE, "a")
    assert not is_wire_command(event)
    with pytest.raises(ProtocolError, match="TimerFired"):
        encode_command(event)


@pytest.mark.parametrize("body, match", [
    ({"v": 1, "kind": "started", "job_id": 7}, "job_id must be a string"),
    ({"v": 1, "kind": "nope"}, "unknown kind"),
    ({"v": 9, "kind": "start"}, "unknown version"),
])
def test_malformed_commands_name_what_is_wrong(body, match) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_command(cbor2.dumps(body))
