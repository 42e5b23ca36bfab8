"""Job queues: at-least-once delivery of job requests to workers, as a pure state machine.

Every bus backend that hosts delivery (``MemoryBus``, the nng router) keeps one
``JobQueues`` and does only the I/O around it. The rules (SPEC §13):

* **One queue per topic.** A job request goes to exactly one consumer that serves its
  topic, whatever else consumers serve (round robin over the consumers with room).
* **A job waits for a worker.** With no consumer of its topic (or none with room) it stays
  queued, in publish order, until one has room. The number of queued jobs is bounded
  (``max_pending``): past it the host makes publishers wait (``full``), nothing is dropped.
* **Acknowledged delivery.** A job handed to a consumer stays owned by the queues until
  that consumer acknowledges it (after publishing its result). A consumer holds at most
  ``capacity`` unacknowledged jobs; an ack frees a slot, which takes the oldest job queued
  for any of its topics.
* **Redelivery.** A consumer that goes away (its connection dropped, it stopped answering
  liveness probes, it left) hands every job it had not acknowledged back to the front of
  its topic's queue, same job id. A job may be redelivered ``max_redeliveries`` times;
  past that it is *lost*: the host reports it to the engine as a failed attempt ("worker
  lost") and the step's retry policy decides what happens next.
* **Duplicates are absorbed.** A request whose job id is already queued or held is
  ignored (an engine that restarts re-publishes the current attempt of every running step;
  the job it finds still owned here must not run twice for that).
* **Cancelled jobs don't run.** ``cancel(job_id)`` drops a queued job and marks a held one
  so that it is not redelivered.

No I/O, no clock, no Trio: methods return what the host must do (``Assignment``s to send,
``LostJob``s to report). ``item`` is whatever the host delivers (a packet object or its
encoded bytes), or a job request kept bare, with its packet's other fields beside it
(``QueuedJob.trace_id``, ``sender_id``, ``created_at``: the host builds the packet only
for whoever wants one).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cordtrio.protocol import JobResult, JobStatus

WORKER_LOST = "WorkerLost"
"""``error_code`` of the failed result a host reports for a lost job."""

DEFAULT_MAX_REDELIVERIES = 3
"""Deliveries of one attempt after the first before it counts as lost (SPEC §13)."""

DEFAULT_MAX_PENDING = 100_000
"""Queued (not yet delivered) jobs a host keeps before publishers of jobs wait."""

_new = object.__new__

_NONE: tuple[Assignment, ...] = ()
"""No job handed out (what ``ack`` usually returns)."""

@dataclass(eq=False, slots=True)
class QueuedJob:
    """One job request owned by the queues: queued (``holder is None``) or held.

    ``trace_id``, ``sender_id`` and ``created_at``: the fields of the packet of a request
    kept bare (``item`` is then the request itself; see ``JobQueues.offer``)."""

    job_id: str
    topic: str
    item: Any
    seq: int
    deliveries: int = 0
    holder: Consumer | None = None
    cancelled: bool = False
    trace_id: str = ""
    sender_id: str = ""
    created_at: datetime | None = None


@dataclass(eq=False, slots=True)
class Consumer:
    """A worker's claim on jobs of ``topics``: at most ``capacity`` held at once.

    ``handle`` is the host's own reference (an inbox, a connection and its id)."""

    topics: frozenset[str]
    capacity: int
    handle: Any = None
    held: dict[str, QueuedJob] = field(default_factory=dict)
    active: bool = True

    @property
    def room(self) -> int:
        return self.capacity - len(self.held)


@dataclass(slots=True)
class Assignment:
    """Deliver ``job`` to ``consumer`` (it now holds the job): its ``item``, a packet; for
    a request the bus kept bare, what the host hands such a consumer (``MemoryBus``: the
    job itself to a reader that takes it bare, else the packet built from it). Not frozen:
    one is made for every job, and a frozen dataclass sets each field through
    ``object.__setattr__``."""

    consumer: Consumer
    job: QueuedJob


@dataclass(frozen=True, slots=True)
class LostJob:
    """A job whose consumers were lost too often: report it as a failed attempt."""

    job_id: str
    topic: str
    item: Any
    deliveries: int
    trace_id: str = ""
    """The job's ``QueuedJob.trace_id`` (a request kept bare)."""


@dataclass(slots=True)
class _Topic:
    queue: deque[QueuedJob] = field(default_factory=deque)
    consumers: list[Consumer] = field(default_factory=list)
    turn: int = 0


def worker_lost_result(job_id: str, deliveries: int) -> JobResult:
    """The result reported for a job whose workers were all lost: a failed attempt, so the
    step's retry policy applies (SPEC §13)."""
    return JobResult(
        job_id, JobStatus.FAILED, worker_id="cordtrio-bus", error_code=WORKER_LOST,
        error_message=(f"worker lost: job {job_id} was delivered {deliveries} times and "
                       "each worker holding it was lost before reporting a result"),
    )


class JobQueues:
    """The job queues of one bus host (see the module docstring)."""

    def __init__(
        self,
        *,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if max_redeliveries < 0:
            raise ValueError(f"max_redeliveries must be >= 0, got {max_redeliveries}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_redeliveries = max_redeliveries
        self.max_pending = max_pending
        self._jobs: dict[str, QueuedJob] = {}
        self._topics: dict[str, _Topic] = {}
        self._sole: dict[str, Consumer] = {}
        """The one consumer of each topic that has exactly one (a worker pool per topic,
        usually): ``offer`` then skips the round robin. Set with a topic's consumers."""
        self._next_seq = itertools.count(1).__next__
        """The next job's ``seq``: the order of publication."""
        self.pending = 0
        """Jobs queued, waiting for a consumer with room."""
        self.redelivered = 0
        """Jobs handed back to their queue because their consumer was lost (total)."""
        self.lost = 0
        """Jobs reported lost after ``max_redeliveries`` (total)."""
        self.duplicates = 0
        """Requests ignored because their job id was already queued or held (total)."""

    # ------------------------------------------------------------------ queries

    @property
    def full(self) -> bool:
        """Publishers of new jobs must wait (the queued jobs reached ``max_pending``)."""
        return self.pending >= self.max_pending

    @property
    def held(self) -> int:
        """Jobs delivered and not yet acknowledged."""
        return len(self._jobs) - self.pending

    def owns(self, job_id: str) -> bool:
        """The job is queued or held here."""
        return job_id in self._jobs

    def get(self, job_id: str) -> QueuedJob | None:
        """The job if it is queued or held here (``holder`` tells which)."""
        return self._jobs.get(job_id)

    # ------------------------------------------------------------------ changes

    def offer(self, job_id: str, topic: str, item: Any, trace_id: str = "",
              sender_id: str = "", created_at: datetime | None = None) -> QueuedJob | None:
        """A job request was published: queue it, and hand it to a consumer with room if
        there is one: the job is returned then, held by that consumer (``holder``), for the
        host to deliver ``item`` to (no ``Assignment`` made: this runs for every job). None
        when it waits in its queue; a duplicate of a queued or held job is ignored (None).
        ``trace_id``, ``sender_id``, ``created_at``: those of its packet, for a request
        kept bare (``item``: the request itself)."""
        jobs = self._jobs
        if job_id in jobs:
            self.duplicates += 1
            return None
        consumer = self._sole.get(topic)
        if consumer is None or len(consumer.held) >= consumer.capacity:
            return self._offer_to_any(job_id, topic, item, consumer, trace_id, sender_id,
                                      created_at)
        # The usual job: its topic's one consumer (a worker's pool) has room. Held at
        # once, delivered once. Its fields set one by one, as ``QueuedJob(job_id, topic,
        # item, seq, 1, consumer, False, trace_id, sender_id, created_at)`` sets them: a
        # third less than ``__init__`` with ten arguments
        # (tests/test_memory_fast_paths.py compares them)
        job = jobs[job_id] = consumer.held[job_id] = _new(QueuedJob)
        job.job_id = job_id
        job.topic = topic
        job.item = item
        job.seq = self._next_seq()
        job.deliveries = 1
        job.holder = consumer
        job.cancelled = False
        job.trace_id = trace_id
        job.sender_id = sender_id
        job.created_at = created_at
        return job

    def add(self, topics: Collection[str], capacity: int, handle: Any = None
            ) -> tuple[Consumer, list[Assignment]]:
        """A consumer joins; it is handed the oldest queued jobs of its topics at once."""
        if capacity < 1:
            raise ValueError(f"a job consumer needs capacity >= 1, got {capacity}")
        if not topics:
            raise ValueError("a job consumer needs at least one topic")
        consumer = Consumer(frozenset(topics), capacity, handle)
        for name in consumer.topics:
            t = self._topic(name)
            self._set_consumers(name, t, [*t.consumers, consumer])
        return consumer, self._fill(consumer)

    def ack(self, consumer: Consumer, job_id: str) -> Collection[Assignment]:
        """``consumer`` is done with ``job_id`` (its result is published): forget the job
        and fill the freed slot; the jobs handed to it then (usually none: ``()``, one
        object for every ack, no list made). Unknown ids (already redelivered elsewhere)
        are ignored."""
        job = consumer.held.pop(job_id, None)
        if job is None:
            return _NONE
        # a held job is the one indexed (a consumer that goes away lets go of every job
        # it held, and only an ack forgets a held one); the job itself is dropped with it
        # (nothing reaches it any more: its ``holder`` is left as it was)
        del self._jobs[job_id]
        # nothing queued anywhere (the usual case under capacity): nothing to hand on
        return self._fill(consumer) if self.pending and consumer.active else _NONE

    def cancel(self, job_id: str) -> bool:
        """The job was cancelled: drop it if queued, never redeliver it if held. True when
        it was known here."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        if job.holder is None:
            del self._jobs[job_id]
            self.pending -= 1  # its queue entry is skipped lazily
        else:
            job.cancelled = True
        return True

    def remove(self, consumer: Consumer) -> tuple[list[Assignment], list[LostJob]]:
        """``consumer`` is gone: every job it held goes back to the front of its queue (or,
        past ``max_redeliveries``, is lost), and is handed on to consumers with room."""
        if not consumer.active:
            return [], []
        consumer.active = False
        for name in consumer.topics:
            t = self._topics.get(name)
            if t is not None:
                self._set_consumers(name, t, [c for c in t.consumers if c is not consumer])
                self._forget_if_idle(name, t)
        lost: list[LostJob] = []
        back: dict[str, list[QueuedJob]] = {}
        for job in sorted(consumer.held.values(), key=lambda j: j.seq):
            job.holder = None
            if self._jobs.get(job.job_id) is not job:
                continue
            if job.cancelled:
                del self._jobs[job.job_id]
            elif job.deliveries > self.max_redeliveries:
                del self._jobs[job.job_id]
                self.lost += 1
                lost.append(LostJob(job.job_id, job.topic, job.item, job.deliveries,
                                    job.trace_id))
            else:
                self.redelivered += 1
                back.setdefault(job.topic, []).append(job)
        consumer.held.clear()
        assignments: list[Assignment] = []
        for name, jobs in back.items():
            t = self._topic(name)
            t.queue.extendleft(reversed(jobs))  # older than anything queued after them
            self.pending += len(jobs)
            for other in tuple(t.consumers):
                assignments += self._fill(other)
        return assignments, lost

    # ------------------------------------------------------------------ internals

    def _offer_to_any(self, job_id: str, topic: str, item: Any, sole: Consumer | None,
                      trace_id: str, sender_id: str, created_at: datetime | None
                      ) -> QueuedJob | None:
        """``offer`` when the topic has no consumer, several, or one without room
        (``sole``): the round robin over those with room, else the job's queue."""
        seq = self._next_seq()
        t = self._topic(topic)
        consumer = None if sole is not None else self._next_consumer(t)
        job = QueuedJob(job_id, topic, item, seq, 0, None, False, trace_id, sender_id,
                        created_at)
        self._jobs[job_id] = job
        if consumer is None:
            t.queue.append(job)
            self.pending += 1
            return None
        job.deliveries = 1
        job.holder = consumer
        consumer.held[job_id] = job
        return job

    def _topic(self, name: str) -> _Topic:
        t = self._topics.get(name)
        if t is None:
            t = self._topics[name] = _Topic()
        return t

    def _set_consumers(self, name: str, t: _Topic, consumers: list[Consumer]) -> None:
        t.consumers = consumers
        if len(consumers) == 1:
            self._sole[name] = consumers[0]
        else:
            self._sole.pop(name, None)

    def _forget_if_idle(self, name: str, t: _Topic) -> None:
        if not t.consumers and not t.queue:
            del self._topics[name]

    def _next_consumer(self, t: _Topic) -> Consumer | None:
        consumers = t.consumers
        n = len(consumers)
        for i in range(n):
            c = consumers[(t.turn + i) % n]
            if len(c.held) < c.capacity:
                t.turn = (t.turn + i + 1) % n
                return c
        return None

    def _fill(self, consumer: Consumer) -> list[Assignment]:
        """Hand ``consumer`` the oldest queued jobs of its topics while it has room."""
        out: list[Assignment] = []
        held, topics, jobs = consumer.held, self._topics, self._jobs
        while self.pending and len(held) < consumer.capacity:
            best: deque[QueuedJob] | None = None
            best_name = ""
            for name in consumer.topics:
                t = topics.get(name)
                if t is None:
                    continue
                q = t.queue
                while q and jobs.get(q[0].job_id) is not q[0]:
                    q.popleft()  # a job cancelled while queued
                if q and (best is None or q[0].seq < best[0].seq):
                    best, best_name = q, name
            if best is None:
                break
            job = best.popleft()
            self.pending -= 1
            job.holder = consumer
            job.deliveries += 1
            held[job.job_id] = job
            out.append(Assignment(consumer, job))
            if not best:
                self._forget_if_idle(best_name, topics[best_name])
        return out


__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_REDELIVERIES",
    "WORKER_LOST",
    "Assignment",
    "Consumer",
    "JobQueues",
    "LostJob",
    "QueuedJob",
    "worker_lost_result",
]
