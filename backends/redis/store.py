"""Redis implementation of the store port (SPEC §11), with the original's key layout.

Keys (``<x>`` is an id; every value is UTF-8 JSON unless said otherwise):

===============================  ==========  ==================================================
``wf:def:<id>``                  string      the workflow (``Workflow.to_dict()``)
``wf:index:all``                 zset        workflow ids, score = last save (unix s)
``wf:index:org:<org>``           zset        the same per org (workflows with an org only)
``wf:run:<id>``                  hash        the run, split in fields (below)
``wf:runs:<workflow>``           zset        run ids of a workflow, score = ``created_at``
``wf:runs:all``                  zset        every run id, score = ``updated_at``
``wf:runs:status:<status>``      zset        run ids in that status, score = ``updated_at``;
                                             a run is in exactly one of them
``wf:runs:active:<org>``         set         non-terminal run ids of the org
``wf:run:timeline:<id>``         list        timeline events, oldest first, LTRIM-ed to 1000
``wf:run:idempotency:<key>``     string      run id (``SET NX``)
===============================  ==========  ==================================================

**Deviation from the original: a run is a hash, not one JSON document.** The original stored
``wf:run:<id>`` as a single JSON string and rewrote it whole on every event, so one fan-out
child result cost O(number of children) bytes on the wire and in the server. Here each part
of the run is a field of the hash, and ``save_run_changes`` (the engine's hot path) rewrites
only the fields an event changed — O(1) whatever the size of the run:

* ``header`` — ``run.header_dict(with_input=False)`` (status, timestamps, output, error...);
* ``input`` — the run input, written by ``create_run``/``update_run`` only (it never changes);
* ``step:<step>`` — one ``StepRun.to_dict(with_children=False)`` per step;
* ``child:<parent>:<child>`` — one ``StepRun.to_dict()`` per for-each child (``%`` and ``:``
  in the parent id are percent-escaped so the field splits unambiguously);
* ``ctx:<key>`` — one per top-level context key other than a map ``steps``;
  ``ctx:steps`` = ``{}`` marks that ``context["steps"]`` is a map, whose entries are
* ``ctxstep:<key>`` — one per ``context["steps"]`` entry (a step's or child's output);
* ``ord:<field>`` — the insertion rank of the field above, so that steps, children and
  context keys read back in the order they were added, as Python dicts (and the memory
  store) keep them. Small hashes keep insertion order in Redis but large ones do not, so the
  order is stored: a new field gets a fresh rank (a nanosecond-clock based counter), an
  existing one keeps its rank, a deleted one loses it. ``header``, ``input`` and the
  ``ctx:steps`` map marker have no rank (a map ``steps`` always comes last);
* ``saved`` — the token of the last step write (``step_write``), or of the write that
  created the run: a write the adapter or the engine sends again after a lost reply finds
  it there and is not applied twice. No rank; run reads ignore it.

Payloads (``ctx:<job>``/``res:<job>``) are in ``payloads.py``, schemas (``schema:<id>``,
``schema:index``) in ``schemas.py``.

``get_run`` is one ``HGETALL`` plus reassembly. ``save_run_changes`` — an engine step — is
one purpose-built Lua script (``step_write.py``), batched with the other runs' calls into one
pipeline and one ``EVALSHA`` (``script_merge.py``): in multi-engine mode a ``GET`` of the
run's lease (the fence); one ``HSET`` of the changed fields and the ranks of the new ones —
the store knows which fields the hash holds for a run object it created, read or wrote
(``field_mirror.py``), and the script checks the count ``HSET`` reports (a missing run, or
one changed behind the store's back, is caught there: nothing written, ``NotFoundError``;
or the ranks put right and read from then on); for any other run object one ``HMGET``
first tells whether the run exists (its ``header``; if not, nothing is written and
``NotFoundError`` is raised) and which written fields have a rank already; an ``HDEL`` for
removed parts; one ``RPUSH`` of the step's timeline events (``LTRIM`` once past the cap);
when the header changed, the index moves — ``ZADD`` to the status zset and ``wf:runs:all``
(new ``updated_at`` score) and, when the status changed, ``ZREM`` from the previous status
zset and, when the run became finished or active again, ``SREM``/``SADD`` of the org's
active set; and the ``SET`` of each job input the step dispatches (``RunChanges.payloads``:
the engine hands them over when its payload store is this store's,
``commits_payloads_of``). The previous status is ``changes.previous_status`` (the engine
always sets it); without it the run is removed from every other status zset. Measured on a
real server, a chain step (a result and the next dispatch) is 8 commands the server
executes, 6 of them inside the script (see ``tests/redis/test_redis_command_counts.py``);
a fan-out child result the same for 100 or 5,000 children. Only removing a whole step
(which drops its children) or rewriting the whole ``context["steps"]`` map needs the field
names first: that rare path reads them with ``HKEYS`` under ``WATCH`` (and the lease, when
fenced), then writes in ``MULTI``/``EXEC``. ``save_run_changes`` never moves a run to
another workflow or org (the engine never changes those); ``update_run`` does.

``create_run`` is one Lua script (``EXISTS``, then the writes — one round trip, batched by
the adapter with other calls); ``create_run_leased`` (``ports.LeasedRunCreate``, the
multi-engine submit with an idempotency key) takes the run's lease in the same script
(``SET NX PX``); a ``save_run_changes`` that creates the run (``RunChanges.created``,
``ports.CreatingWrites``: an engine's submit, its start written with the run) is the same
script with the write's token in the ``saved`` field (a resend that finds it there is
done), its timeline events and job inputs, and, fenced, the lease, which it must get
(else nothing is written: ``LeaseLostError``);
``update_run``, ``delete_run``, ``save_workflow`` and ``delete_workflow`` are optimistic
transactions (``WATCH``, read what the index moves need, ``MULTI``/``EXEC``).

The code is split by responsibility into mixins that ``RedisStore`` combines:
``workflows.py`` (definitions and their indexes), ``runs.py`` (whole-run create, update, get,
delete), ``run_changes.py`` (``save_run_changes``, unfenced and lease-fenced),
``run_index.py`` (run index moves and listings), ``timelines.py``, ``idempotency.py``,
``step_write.py`` (the script of an engine step) with ``step_argv.py`` (its arguments built
straight from the run and its changes), ``run_hash.py`` (the run hash's fields:
encoding and reassembly) with ``run_json.py`` (the header, step and timeline-event JSON
written straight from the objects), ``field_mirror.py`` (the field names the
store knows per run object), ``leases.py`` (leases and command inboxes) over ``base.py``
(connection, clock, ranks).

Behaviour matches ``cordtrio.backends.memory.MemoryStore`` (see its docstring; the same
conformance suite runs on both) with these differences:

* Ties in a sorted index (equal timestamps) are ordered by id (Redis orders equal scores
  lexicographically), not by the most recent write.
* Ids that would make two SPEC keys collide are refused with ``ValidationError``: a workflow
  id ``all`` or starting with ``status:``/``active:`` (``wf:runs:<workflow>`` would be
  ``wf:runs:all``...), a run id starting with ``timeline:``/``idempotency:``.
* Corrupt data (bad JSON, a key of the wrong type) raises ``RedisDataError`` naming the key
  from ``get_*``; listings skip such entries and log a warning. ``RedisDataError`` is a
  ``CordtrioError`` but not a ``StoreError``: the engine does not retry it (retrying cannot
  fix it); connection trouble is a ``StoreError``, which it does retry.
"""

from __future__ import annotations

from cordtrio.ports import TIMELINE_CAP

from .idempotency import RedisIdempotency
from .keys import (
    active_runs_key,
    idempotency_key,
    run_key,
    runs_by_status_key,
    runs_by_workflow_key,
    timeline_key,
    workflow_key,
    workflow_org_index,
)
from .leases import RedisRunLeases
from .run_changes import RedisRunChanges
from .run_index import RedisRunIndex
from .runs import RedisRuns
from .timelines import RedisTimelines
from .workflows import RedisWorkflows


class RedisStore(
    RedisWorkflows,
    RedisRunChanges,
    RedisRuns,
    RedisRunIndex,
    RedisTimelines,
    RedisIdempotency,
    RedisRunLeases,
):
    """Workflows, runs (with their indexes), timelines and idempotency keys in Redis; and
    run leases with command inboxes (``RunLeases``, see ``leases.py``) for several engines.

    Built by ``cordtrio.backends.redis.connect``; ``clock`` (``now()`` → aware UTC datetime)
    stamps the timestamps the store fills in, as in ``MemoryStore``.
    """


__all__ = [
    "TIMELINE_CAP",
    "RedisStore",
    "active_runs_key",
    "idempotency_key",
    "run_key",
    "runs_by_status_key",
    "runs_by_workflow_key",
    "timeline_key",
    "workflow_key",
    "workflow_org_index",
]
