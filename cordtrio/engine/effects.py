"""A run task's I/O for the core's effects: job payloads, job requests, cancels and notify
alerts on the bus, and result payloads read back for the core (SPEC §8).

Every function reports a failure the core must hear about as a message (``""``: it worked)
instead of raising: ``RunTask`` feeds it back into ``decide`` (``DispatchFailed``,
``AlertOutcome``). Only cancellation propagates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .. import json_payloads
from ..core.events import CancelJob, Dispatch, LoadedOutput, PublishAlert
from ..core.plan import MAX_INLINE_OUTPUT_BYTES, SENDER_ID
from ..errors import NotFoundError, PayloadPointerError
from ..json_payloads import StorePath
from ..model import WorkflowRun
from ..payloads import CONTEXT_PREFIX, RESULT_PREFIX, check_payload_key, key_from_pointer
from ..ports import Bus, ConfigProvider, PayloadCommit, PayloadStore
from ..protocol import (
    PROTOCOL_VERSION,
    SUBJECT_CANCEL,
    SUBJECT_SUBMIT,
    SUBJECT_WORKFLOW_EVENT,
    BusPacket,
    JobCancel,
    JobRequest,
)
from ..retry import retry_after

log = logging.getLogger("cordtrio.engine")


def commits_payloads(store: object, payloads: PayloadStore | None) -> bool:
    """Whether ``store`` writes ``payloads``' job inputs in its run writes
    (``ports.PayloadCommit``): then ``store_payload`` only stages them."""
    return payloads is not None and isinstance(store, PayloadCommit) and \
        store.commits_payloads_of(payloads)


async def store_payload(path: StorePath | None, effect: Dispatch,
                        staged: dict[str, bytes] | None = None) -> str:
    """Store a job's input payload at its context key (before the job is persisted), through
    the payload store's ``path`` (``json_payloads.path_for``; None: no payload store). An
    unreachable store is waited out (SPEC §13); only a definite error is reported. With
    ``staged`` (the store commits the payloads, ``commits_payloads``) the payload is only
    encoded and put there, for the run write that persists the dispatch to carry."""
    if staged is not None:
        return stage_payload(path, effect, staged)
    if not effect.context_key or path is None:
        return ""
    try:
        data = path.encode(effect.payload, True)  # compact
    except (TypeError, ValueError) as exc:
        return f"step input is not JSON: {exc}"
    key = effect.context_key
    try:
        try:
            await path.put_context(key, data)
        except Exception as exc:
            await retry_after(exc, lambda: path.put_context(key, data),
                              f"store payload {key}")
    except Exception as exc:
        return f"store payload {key}: {exc}"
    return ""


def stage_payload(path: StorePath | None, effect: Dispatch, staged: dict[str, bytes]
                  ) -> str:
    """``store_payload`` for a store that commits the payloads (``commits_payloads``): the
    job's input encoded and put into ``staged``, for the run write that persists the
    dispatch to carry. No I/O: a plain call (no coroutine per job)."""
    key = effect.context_key
    if not key or path is None:
        return ""
    try:
        data = path.encode(effect.payload, True)  # compact
    except (TypeError, ValueError) as exc:
        return f"step input is not JSON: {exc}"
    try:
        staged[check_payload_key(key, CONTEXT_PREFIX)] = (
            data.text() if isinstance(data, json_payloads.JsonPayload) else data)
    except ValueError as exc:
        return f"store payload {key}: {exc}"
    return ""


def store_payload_now(path: StorePath | None, effect: Dispatch) -> str | None:
    """``store_payload`` into an in-process store (``StorePath.store_context_now``: the
    input encoded and put in one call), not awaited (a coroutine fewer per job). None when
    it must be awaited instead: another store, or a write that failed in a way
    ``store_payload`` may wait out (it writes again)."""
    store_now = path.store_context_now if path is not None else None
    key = effect.context_key
    if store_now is None or not key:
        return None
    try:
        store_now(key, effect.payload)  # the value's errors before the key's
    except PayloadPointerError as exc:  # definite: a key outside the namespace
        return f"store payload {key}: {exc}"
    except (TypeError, ValueError) as exc:  # ``encode``'s: what ``json.dumps`` refuses
        return f"step input is not JSON: {exc}"
    except Exception:
        return None
    return ""


async def publish_job(bus: Bus, now: datetime, config: ConfigProvider | None, run_id: str,
                      run: WorkflowRun | None, effect: Dispatch) -> str:
    """Publish a job request, with the step's effective configuration when the engine has
    a ``ConfigProvider`` (its failure is logged, the job goes out without it)."""
    request = effect.request
    if config is not None:
        try:
            cfg = await config.effective(
                run.org_id if run else "", run.team_id if run else "",
                request.workflow_id, effect.target_id)
            if cfg:
                request.env["CORDUM_EFFECTIVE_CONFIG"] = json.dumps(cfg, default=str)
        except Exception:
            log.warning("run %s: config provider failed for step %s", run_id,
                        effect.target_id, exc_info=True)
    try:
        await bus.publish(SUBJECT_SUBMIT, packet(now, run_id, request))
    except Exception as exc:
        return f"publish {effect.job_id}: {exc}"
    return ""


async def publish_alert(bus: Bus, now: datetime, run_id: str, effect: PublishAlert) -> str:
    """Publish a notify step's alert (its outcome decides the step)."""
    try:
        await bus.publish(SUBJECT_WORKFLOW_EVENT, packet(now, run_id, effect.alert))
    except Exception as exc:
        return f"publish alert: {exc}"
    return ""


async def publish_cancel(bus: Bus, now: datetime, run_id: str, effect: CancelJob) -> None:
    """Ask workers to stop a job; best effort (a lost cancel leaves a result to ignore)."""
    cancel = JobCancel(job_id=effect.job_id, reason=effect.reason, requested_by=SENDER_ID)
    try:
        await bus.publish(SUBJECT_CANCEL, packet(now, run_id, cancel))
    except Exception:
        log.warning("run %s: could not publish cancel for %s", run_id, effect.job_id,
                    exc_info=True)


def load_output_now(path: StorePath, result_ptr: str, into: LoadedOutput
                    ) -> LoadedOutput | None:
    """``load_output`` from an in-process store (``StorePath.output_at_now``: the output
    and whether it is too large, in one call), not awaited (a coroutine fewer per result),
    into ``into`` (loaded, without error: a caller's, filled again for every result it
    hands the core before the next; a failed read gives a new one). None when it must be
    awaited instead: another store, or a read that failed in a way ``load_output`` may
    wait out (it reads again)."""
    output_now = path.output_at_now
    if output_now is None:
        return None
    try:
        into.value, into.too_large = output_now(result_ptr, MAX_INLINE_OUTPUT_BYTES)
    except (ValueError, NotFoundError) as exc:
        return LoadedOutput(error=str(exc), loaded=False)
    except Exception:
        return None
    return into


def output_of(data: bytes) -> LoadedOutput:
    """What ``load_output`` makes of the payload ``data`` it read (SPEC §8): ``_loaded``
    of ``JsonPayload.of_text(data)``, without the payload object (its text is ``data``)."""
    return LoadedOutput(value=json_payloads.value_or_text_of(data),
                        too_large=len(data) > MAX_INLINE_OUTPUT_BYTES)


def _loaded(payload: json_payloads.JsonPayload) -> LoadedOutput:
    """A result payload read, as the core takes it: JSON, else the raw string; too large
    for the run, or not."""
    return LoadedOutput(value=payload.value_or_text(),
                        too_large=payload.too_large(MAX_INLINE_OUTPUT_BYTES))


def packet(now: datetime, run_id: str, payload: Any) -> BusPacket:
    """The engine's envelope for a bus message about ``run_id`` (traced by the run id), sent
    at ``now`` (the time the run task decided at: one clock read per event, not per
    message)."""
    return BusPacket(run_id, SENDER_ID, now, PROTOCOL_VERSION, payload)


def request_packet(now: datetime, run_id: str, request: JobRequest,
                   sender_id: str = SENDER_ID) -> BusPacket:
    """``packet(now, run_id, request)`` for a job request, its fields set one by one (a
    third less than ``__init__``; tests/engine/test_engine_api.py compares the packet with
    ``BusPacket(...)``'s)."""
    packet = _new(BusPacket)
    packet.trace_id = run_id
    packet.sender_id = sender_id
    packet.created_at = now
    packet.protocol_version = PROTOCOL_VERSION
    packet.payload = request
    return packet


_new = object.__new__


def packets_now(publish_now: Callable[[str, BusPacket], bool]
                ) -> Callable[[JobRequest, str, datetime, str], bool]:
    """A ``submit_now`` (``MemoryBus.submit_now``'s terms: True, handed over; False,
    refused having done nothing, to be published awaited; or it raises) for a bus that
    publishes packets at once but takes no bare job request (``ports.PublishNow``: the
    nng router in the engine's process): the request in its packet (``request_packet``),
    through ``publish_now``. A run task then hands every job over one way."""

    def submit_now(request: JobRequest, run_id: str, now: datetime, sender_id: str
                   ) -> bool:
        return publish_now(SUBJECT_SUBMIT, request_packet(now, run_id, request, sender_id))

    return submit_now


async def load_output(path: StorePath, result_ptr: str) -> LoadedOutput:
    """Read and decode a result payload (SPEC §8) through the payload store's ``path``
    (``json_payloads.path_for``): JSON, else the raw string. A pointer outside the payload
    namespace is refused unread (``cordtrio.payloads``)."""
    try:
        key = key_from_pointer(result_ptr, RESULT_PREFIX)
        try:
            data = await path.get_result(key)
        except Exception as exc:
            data = await retry_after(exc, lambda: path.get_result(key),
                                     f"load {result_ptr}")
    except (ValueError, NotFoundError) as exc:
        return LoadedOutput(error=str(exc), loaded=False)
    except Exception as exc:
        return LoadedOutput(error=f"load {result_ptr}: {exc}", loaded=False)
    return _loaded(data)


__all__ = [
    "commits_payloads",
    "load_output",
    "load_output_now",
    "output_of",
    "packet",
    "packets_now",
    "publish_alert",
    "publish_cancel",
    "publish_job",
    "request_packet",
    "stage_payload",
    "store_payload",
    "store_payload_now",
]
