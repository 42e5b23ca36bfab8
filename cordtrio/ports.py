"""The small interfaces the engine talks to. Backends implement them; the engine imports
nothing else from a backend.

Beyond API.md, the store has two methods the engine uses on its hot path:
``save_run_changes`` (write only what an event changed, so a fan-out child result costs
O(1) whatever the run's size, together with the batch's timeline events in the same atomic
write, so a crash never keeps one without the other) and ``append_timeline_events``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import trio

from .model import RunStatus, TimelineEvent, Workflow, WorkflowRun
from .protocol import BusPacket

_new = object.__new__

TIMELINE_CAP = 1000
"""Newest timeline entries a store keeps per run (SPEC §10)."""

DEFAULT_WORKFLOW_LIMIT = 50
DEFAULT_RUN_LIMIT = 50
DEFAULT_STATUS_LIMIT = 200
DEFAULT_TIMELINE_LIMIT = 100
"""Listing defaults used when a store method gets ``limit <= 0``."""


def status_text(status: object) -> str:
    """A run status (enum or string) as its stored lower-case string."""
    return str(status.value) if isinstance(status, RunStatus) else str(status).strip().lower()


def own_call(obj: object, flag: str, name: str) -> Any:
    """``obj.<name>``, a call offered without awaiting (``PublishNow``, ``WritesNow``), when
    ``obj`` offers it itself and its ``flag`` is true; None when it is missing, turned off
    (a subclass that changes the awaited call), or reached through a wrapper (which may
    count, fail or cut what it passes on, and must see every call)."""
    method = getattr(obj, name, None)
    if getattr(obj, flag, False) and getattr(method, "__self__", None) is obj:
        return method
    return None


def child_order_key(child_id: str) -> tuple[str, int]:
    """Sort key that puts for-each children ``step[i]`` in index order (O(k log k) for k
    changed children, never a scan of all of them)."""
    base, sep, rest = child_id.rpartition("[")
    if sep and rest.endswith("]") and rest[:-1].isdigit():
        return base, int(rest[:-1])
    return child_id, -1


@dataclass(init=False, slots=True)
class RunChanges:
    """What one batch of events changed in a run; the store writes exactly these parts.

    ``steps`` are top-level step ids whose StepRun (without its children) changed;
    ``children`` maps a for-each parent to the child ids that changed; ``context_steps``
    are keys of ``context["steps"]`` that changed; ``context_keys`` are other top-level keys
    of ``context`` that changed (``output_path`` writes). ``header`` means the run's own
    fields (status, timestamps, output, error...) changed.
    """

    header: bool = False
    steps: set[str] = field(default_factory=set)
    children: dict[str, set[str]] = field(default_factory=dict)
    context_steps: set[str] = field(default_factory=set)
    context_keys: set[str] = field(default_factory=set)
    previous_status: RunStatus | None = None
    lease_owner: str | None = None
    """Multi-engine fencing (``RunLeases`` stores): when set, the write happens only if this
    owner holds the run's lease, checked in the same atomic step, else nothing is written
    and ``LeaseLostError`` is raised. It is not a change: it does not make the record
    truthy, and with no parts named the timeline alone is appended (fenced)."""
    payloads: dict[str, bytes] = field(default_factory=dict)
    """Job input payloads (context key → bytes) to write in the same atomic write as the
    changes that dispatch their jobs. Only for a store that commits the engine's payload
    store (``PayloadCommit``): the engine then stores no payload of its own first."""
    created: str = ""
    """Non-empty (a store with ``CreatingWrites``): the run is not stored yet; this write
    creates all of it (whatever the parts named), with its indexes, timeline and payloads,
    or nothing if it exists (``InvalidStateError``) — unless an earlier try of this very
    write created it (the text is the write's token): then it succeeds. With
    ``lease_owner`` the lease is taken in it, for ``lease_ttl`` s (another owner's: nothing
    written, ``LeaseLostError``). It makes the record truthy."""
    lease_ttl: float = 0.0
    release_lease: bool = False
    """With ``lease_owner``: the write also releases the run's lease (as ``release_lease``
    does, in the same atomic step, only if it is written: the owner holds the lease) — the
    run's last write, the one that makes it terminal. Not a change, like ``lease_owner``;
    ignored on an unfenced write."""

    def __init__(
        self, header: bool = False, steps: set[str] | None = None,
        children: dict[str, set[str]] | None = None, context_steps: set[str] | None = None,
        context_keys: set[str] | None = None, previous_status: RunStatus | None = None,
        lease_owner: str | None = None, payloads: dict[str, bytes] | None = None,
        created: str = "", lease_ttl: float = 0.0, release_lease: bool = False,
    ) -> None:
        # Written out rather than generated: one is made per engine step, and the generated
        # ``__init__`` (default factories) costs about twice as much.
        self.header = header
        self.steps = set() if steps is None else steps
        self.children = {} if children is None else children
        self.context_steps = set() if context_steps is None else context_steps
        self.context_keys = set() if context_keys is None else context_keys
        self.previous_status = previous_status
        self.lease_owner = lease_owner
        self.payloads = {} if payloads is None else payloads
        self.created = created
        self.lease_ttl = lease_ttl
        self.release_lease = release_lease

    @classmethod
    def none_yet(cls, previous_status: RunStatus | None) -> RunChanges:
        """No change yet, the run's status being ``previous_status``: what the core starts
        every event with. Its fields set here, without ``__init__`` (which tests each
        default): half the cost."""
        changes = _new(cls)
        changes.header = False
        changes.steps = set()
        changes.children = {}
        changes.context_steps = set()
        changes.context_keys = set()
        changes.previous_status = previous_status
        changes.lease_owner = None
        changes.payloads = {}
        changes.created = ""
        changes.lease_ttl = 0.0
        changes.release_lease = False
        return changes

    def ordered_children(self, parent: str) -> list[str]:
        """The changed children of ``parent`` in index order (stores keep that order)."""
        return sorted(self.children.get(parent, ()), key=child_order_key)

    def touch_child(self, parent: str, child: str) -> None:
        self.children.setdefault(parent, set()).add(child)

    def merge(self, other: RunChanges) -> None:
        self.header |= other.header
        self.steps |= other.steps
        for parent, kids in other.children.items():
            self.children.setdefault(parent, set()).update(kids)
        self.context_steps |= other.context_steps
        self.context_keys |= other.context_keys
        if self.previous_status is None:
            self.previous_status = other.previous_status
        self.payloads.update(other.payloads)

    def __bool__(self) -> bool:
        return bool(
            self.header or self.steps or self.children or self.context_steps or self.context_keys
            or self.payloads or self.created
        )


@runtime_checkable
class Store(Protocol):
    """Durable workflows, runs, timelines and idempotency keys (SPEC §11)."""

    async def save_workflow(self, wf: Workflow) -> None: ...
    async def get_workflow(self, workflow_id: str) -> Workflow: ...
    async def delete_workflow(self, workflow_id: str) -> None: ...
    async def list_workflows(self, org_id: str = "", limit: int = 50) -> list[Workflow]: ...
    async def create_run(self, run: WorkflowRun) -> None: ...
    async def update_run(self, run: WorkflowRun) -> None: ...
    async def save_run_changes(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None: ...
    async def get_run(self, run_id: str) -> WorkflowRun: ...
    async def delete_run(self, run_id: str) -> None: ...
    async def count_active_runs(self, org_id: str) -> int: ...
    async def list_runs_by_workflow(
        self, workflow_id: str, limit: int = 50
    ) -> list[WorkflowRun]: ...
    async def list_runs(self, cursor_unix: int = 0, limit: int = 50) -> list[WorkflowRun]: ...
    async def list_run_ids_by_status(self, status: str, limit: int = 200) -> list[str]: ...
    async def append_timeline_event(self, run_id: str, event: TimelineEvent) -> None: ...
    async def append_timeline_events(
        self, run_id: str, events: Sequence[TimelineEvent]
    ) -> None: ...
    async def list_timeline_events(
        self, run_id: str, limit: int = 100
    ) -> list[TimelineEvent]: ...
    async def try_set_run_idempotency_key(self, key: str, run_id: str) -> bool: ...
    async def get_run_by_idempotency_key(self, key: str) -> str | None: ...
    async def delete_run_idempotency_key(self, key: str) -> None: ...


@runtime_checkable
class RunRepair(Protocol):
    """Optional for stores whose data can be corrupted from outside (Redis): mark a run
    that cannot be read ``failed`` with ``reason`` (naming the key), so it never stays
    ``running``. Returns the message recorded; ``NotFoundError`` if nothing is stored."""

    async def fail_unreadable_run(self, run_id: str, reason: str) -> str: ...


@runtime_checkable
class PayloadCommit(Protocol):
    """Optional for stores that can write job input payloads of a payload store together
    with a run's changes (``RunChanges.payloads``): the dispatching step and its job's input
    in one atomic write and one round trip instead of a put and a write. The engine asks
    once, when it opens, whether its payload store is one of those."""

    def commits_payloads_of(self, payloads: object) -> bool: ...


@runtime_checkable
class CreatingWrites(Protocol):
    """Optional for stores: ``save_run_changes`` (and ``save_run_changes_now``) creates the
    run with ``RunChanges.created`` when ``creates_runs_on_write`` is true (False in a
    subclass overriding ``create_run`` or ``create_run_leased``: it observes creates).
    ``Engine.submit`` then writes nothing: the run's start creates it (docs/architecture.md,
    *A submitted run*). A wrapper may say so only if it passes the write on as it is."""

    creates_runs_on_write: bool


class CreatesRunsOnWrite:
    """Base of a store that is ``CreatingWrites``: says so, unless a subclass overrides
    ``create_run`` or ``create_run_leased`` (to count, stall or fail creates: those then
    stay the way runs are created)."""

    creates_runs_on_write = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("create_run", "create_run_leased"):  # overridden, not first defined
            if name in cls.__dict__ and any(hasattr(base, name) for base in cls.__bases__):
                cls.creates_runs_on_write = False


class CountsDeletions:
    """Base of a store that counts the deletions made through it (``RunPresence``):
    ``runs_deleted``, the ``delete_run`` calls ended, and ``runs_deleting``, those under
    way; ``delete_run`` does its work inside ``deleting()``."""

    runs_deleted = 0
    runs_deleting = 0

    @contextmanager
    def deleting(self) -> Iterator[None]:
        """A ``delete_run`` under way, then ended (however it ends: it may have landed)."""
        self.runs_deleting += 1
        try:
            yield
        finally:
            self.runs_deleting -= 1
            self.runs_deleted += 1


def creates_runs_on_write(store: object) -> bool:
    """Whether ``store`` creates a run with the write of its start (``CreatingWrites``;
    an attribute read, where a runtime protocol check walks the protocol's members)."""
    return bool(getattr(store, "creates_runs_on_write", False))


@runtime_checkable
class SharedWorkflows(Protocol):
    """A store in the engine's own process (``MemoryStore``) that can lend a definition
    instead of copying it: ``get_workflow_shared`` returns the stored ``Workflow`` itself,
    which the caller must not change (a save replaces it, never changes it). ``submit``
    reads the definition only to check the input and to find its cached plan, so a copy
    per run (~57k instructions for a five-step chain) would be thrown away."""

    async def get_workflow_shared(self, workflow_id: str) -> Workflow: ...


@runtime_checkable
class WritesNow(Protocol):
    """A store in the engine's own process (``MemoryStore``) whose run write need not be
    awaited: ``save_run_changes_now`` does what ``save_run_changes`` does, with no
    cancellation check, when ``writes_now`` is true (False in a subclass that changes the
    awaited write). An engine alone on such a store writes a step with it.

    The ``timeline`` events are handed over: the store may keep the very objects (and fill
    in a missing ``time``, share an empty ``data``), so the caller must not use them after
    the call (the engine
    builds them for the write and drops them). The run's parts are copied, as with
    ``save_run_changes``."""

    writes_now: bool

    def save_run_changes_now(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None: ...


@runtime_checkable
class RunPresence(Protocol):
    """Optional for stores: which runs are gone. The lease keeper uses it to tell runs
    whose data vanished (a Redis restarted without persistence) from leases taken over.
    Such a store may also count the deletions made through it (``CountsDeletions``:
    ``runs_deleted``, the ``delete_run`` calls ended, and ``runs_deleting``, those under
    way): the engine then answers a ``wait_run`` for a run it just finished without
    asking, unless a deletion ended since the run's last write went or one is under way
    (``engine/ended_runs.py``)."""

    async def missing_runs(self, run_ids: Sequence[str]) -> list[str]: ...


@runtime_checkable
class RunLeases(Protocol):
    """Optional store capability for several engines over one store (multi-engine mode).

    A run is driven by at most one engine at a time: the holder of its *lease* (a key with a
    TTL, renewed by the holder, released when it lets the run go). Commands and job results
    that reach an engine not holding the lease go to the run's durable *inbox*, and the
    holder is woken to apply them. A store without this capability runs single-engine.
    Writes are fenced by ``RunChanges.lease_owner`` in ``save_run_changes``. A store
    normally used by one engine only may set the class attribute
    ``multi_engine_default = False`` (``open_engine`` then needs ``multi_engine=True`` or
    an ``engine_id``).

    ``ttl`` is in seconds. Memory stores measure it on Trio's clock (``MockClock`` expires
    leases), Redis on the server's clock.
    """

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        """Take the lease if it is free (or extend it if ``owner`` holds it); False when
        another owner holds it."""
        ...

    async def renew_leases(
        self, owner: str, run_ids: Sequence[str], ttl: float
    ) -> set[str]:
        """Extend every lease of ``run_ids`` that ``owner`` still holds, in one call; return
        the ids it no longer holds (expired, or taken by another owner)."""
        ...

    async def release_lease(self, run_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it (compare-and-delete); else do nothing."""
        ...

    async def lease_owner(self, run_id: str) -> str | None:
        """Who holds the run's lease now, or None."""
        ...

    async def unleased(self, run_ids: Sequence[str]) -> list[str]:
        """The ids among ``run_ids`` whose lease nobody holds (one call), in order."""
        ...

    async def push_command(self, run_id: str, data: bytes) -> str | None:
        """Append ``data`` to the run's inbox and, atomically with it, wake the lease holder
        (returned), or — nobody holding the lease — queue the run for any engine (None)."""
        ...

    async def push_unassigned(self, run_id: str, data: bytes) -> None:
        """Append ``data`` to the run's inbox and queue the run for any engine."""
        ...

    async def take_commands(self, run_id: str) -> list[bytes]:
        """Move the run's inbox to the end of its *processing* list and return that whole
        list, oldest first (atomically): every command taken and not yet acknowledged,
        so a new owner re-applies what a previous one took and never persisted. The inbox
        is at-least-once; applying a command twice is harmless (see docs/decisions.md)."""
        ...

    async def ack_commands(self, run_id: str, owner: str, count: int) -> bool:
        """Drop the first ``count`` commands of the run's processing list — once the batch
        that applied them is persisted — if ``owner`` holds the run's lease (atomically);
        False, dropping nothing, when it does not (the next owner re-applies them)."""
        ...

    async def runs_with_commands(self, limit: int = 1000) -> list[str]:
        """Ids of runs whose inbox or processing list holds commands (takeover scans)."""
        ...

    async def wait_wakeups(self, owner: str, timeout: float) -> list[str]:
        """Wait up to ``timeout`` s for a run id woken for ``owner`` or queued for any
        engine; return the ids taken (empty on timeout)."""
        ...


@runtime_checkable
class LeasedRunCreate(Protocol):
    """Optional for stores with ``RunLeases``: create a run and take its lease in one atomic
    write. The engine that submits a run then holds it from its creation on — no other
    engine and no queued command can reach it first (a command pushed meanwhile wakes this
    engine) — so its run task starts from the run it created, with nothing read back."""

    async def create_run_leased(self, run: WorkflowRun, owner: str, ttl: float) -> bool:
        """``create_run`` (``InvalidStateError`` if the id exists, nothing written), and
        ``owner`` takes the run's lease for ``ttl`` seconds in the same write. False when
        another owner held that lease already: the run is created all the same, unleased."""
        ...


@runtime_checkable
class PayloadStore(Protocol):
    """Job input/output bytes (UTF-8 JSON) by key; missing → ``NotFoundError``."""

    async def put_context(self, key: str, data: bytes) -> None: ...
    async def get_context(self, key: str) -> bytes: ...
    async def put_result(self, key: str, data: bytes) -> None: ...
    async def get_result(self, key: str) -> bytes: ...


@runtime_checkable
class SchemaRegistry(Protocol):
    """JSON Schemas by id."""

    async def register(self, schema_id: str, schema: dict[str, Any]) -> None: ...
    async def get(self, schema_id: str) -> dict[str, Any]: ...
    async def delete(self, schema_id: str) -> None: ...
    async def list(self, limit: int = 100) -> list[str]: ...
    async def validate(self, schema_id: str, value: Any) -> None: ...


@runtime_checkable
class Bus(Protocol):
    """Subjects with plain and queue-group subscribers (API.md)."""

    async def publish(self, subject: str, packet: BusPacket) -> None: ...

    def subscribe(
        self, subject: str, queue: str = "", *, max_buffer: int = 1024
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[BusPacket]]: ...


@runtime_checkable
class JobInbox(Protocol):
    """A worker's share of the job queues (SPEC §13), from ``JobBus.consume_jobs``.

    ``receive`` yields job request packets for the consumer's topics; the bus keeps owning
    each job until ``ack(job_id)`` (call it once the job's result is published). At most
    ``capacity`` jobs are held unacknowledged at once: the next one arrives after an ack.
    When the bus takes held jobs back (the worker's connection was reset or declared dead,
    and they went to another worker), it calls ``on_lost(job_id)`` for each one that was
    already received, so that the worker stops them without reporting; jobs not yet
    received are simply never returned by ``receive``.

    An inbox in the worker's own process may offer more (``LocalJobInbox``): a reader that
    sets its ``bare_jobs`` is handed a job request the bus kept bare as the bus's own job
    (of class ``bare_job_type``, whose ``item`` is the request and which keeps the
    packet's fields) instead of a packet; every other reader gets packets.
    """

    on_lost: Callable[[str], None] | None

    async def receive(self) -> BusPacket: ...

    def receive_nowait(self) -> BusPacket: ...

    def ack(self, job_id: str) -> None: ...


@runtime_checkable
class JobBus(Bus, Protocol):
    """A bus that delivers job requests at least once (SPEC §13): a request published on
    ``sys.job.submit`` waits in its topic's queue until a consumer of that topic takes it."""

    def consume_jobs(
        self, topics: Collection[str], *, capacity: int
    ) -> AbstractAsyncContextManager[JobInbox]: ...


@runtime_checkable
class DirectBus(Protocol):
    """A bus in the listener's own process (``MemoryBus``), which can hand a packet to a
    callback from within ``publish`` instead of through a subscription channel: the
    engine routes job results into run mailboxes without a task of its own in between.

    Optional: a true ``listens_for_payloads`` says ``listen`` also takes
    ``on_payload=callable``, which does what ``callback`` does with a packet's payload
    alone; the bus may then hand it a payload with no packet built (``MemoryBus``: a
    worker's result, while the callback alone listens to its subject)."""

    def listen(
        self, subject: str, queue: str, callback: Callable[[BusPacket], None]
    ) -> AbstractAsyncContextManager[None]: ...


@runtime_checkable
class PublishNow(Protocol):
    """A bus that can take some packets without being awaited: ``publish_now`` publishes
    the packet with no cancellation check when nothing can make it wait, and returns
    False having done nothing otherwise; only when ``publishes_now`` is true (False in a
    subclass that changes ``publish``). In the publisher's own process (``MemoryBus``, the
    nng router) it does what ``publish`` would; a client connection (``NngBus``) takes a
    worker's result for a job it received, settled when the router confirms it. A worker
    publishes its results with it first; the engine its job requests when the bus cannot
    take them bare (``MemoryBus.submit_now``) and ``publishes_requests_now`` is true (a
    bus that would refuse every job request says False: the engine then awaits
    ``publish`` without trying)."""

    publishes_now: bool

    def publish_now(self, subject: str, packet: BusPacket) -> bool: ...


class OffersPublishNow:
    """Base of a bus that offers ``publish_now`` (``PublishNow``): ``publishes_now`` is true
    on the class implementing it and false on a subclass that overrides ``publish`` or
    ``publish_now`` (to observe, fail or count packets: those then go through the method
    it overrides)."""

    publishes_now = True
    publishes_requests_now = True  # (``PublishNow``: False where no job request is taken)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        implemented = any("publish_now" in base.__dict__ for base in cls.__mro__[1:])
        if implemented and ("publish" in cls.__dict__ or "publish_now" in cls.__dict__):
            cls.publishes_now = False


@runtime_checkable
class ConfigProvider(Protocol):
    """Effective configuration for a step; non-empty results go into the job's env."""

    async def effective(
        self, org_id: str, team_id: str, workflow_id: str, step_id: str
    ) -> dict[str, Any]: ...


@runtime_checkable
class Clock(Protocol):
    """Wall-clock time for timestamps. Waiting always uses Trio's clock."""

    def now(self) -> datetime: ...


__all__ = [
    "Bus",
    "Clock",
    "ConfigProvider",
    "CountsDeletions",
    "CreatingWrites",
    "JobBus",
    "JobInbox",
    "LeasedRunCreate",
    "PayloadCommit",
    "PayloadStore",
    "PublishNow",
    "RunChanges",
    "RunLeases",
    "RunPresence",
    "RunRepair",
    "SchemaRegistry",
    "SharedWorkflows",
    "Store",
    "WritesNow",
    "child_order_key",
    "own_call",
]
