"""A working area renewed (``Tx.renew``, the run task's once each batch is done with it) is
as a new one would be: nothing of its last event shows through."""

from __future__ import annotations

from datetime import timedelta

from harness import T0, Sim, step, workflow

from cordtrio.core.state import Tx
from cordtrio.model import RunStatus


def _parts(tx: Tx) -> tuple[object, ...]:
    c = tx.changes
    return (tx.plan, tx.state, tx.run, tx.now, tx.effects, tx.rows, c.header, c.steps,
            c.children, c.context_steps, c.context_keys, c.previous_status, c.lease_owner,
            c.payloads, c.release_lease)


def test_a_renewed_working_area_is_a_new_one_and_leaves_what_it_handed_over() -> None:
    sim = Sim(workflow(step("a")))
    sim.start()
    tx = Tx(sim.plan, sim.state, T0)
    tx.effects.append("effect")  # type: ignore[arg-type]
    tx.rows.append("row")  # type: ignore[arg-type]
    changes = tx.changes
    changes.header = True
    changes.steps.add("a")
    changes.touch_child("fan", "fan[0]")
    changes.context_steps.add("a")
    changes.context_keys.add("out")
    changes.payloads["ctx:run-1:a@1"] = b"{}"
    changes.lease_owner = "engine-1"
    changes.release_lease = True
    handed = (tx.effects, tx.rows, changes.steps, changes.children, changes.context_steps,
              changes.context_keys, changes.payloads)
    sim.run.status = RunStatus.WAITING
    later = T0 + timedelta(seconds=1)

    assert tx.renew(later) is tx
    assert _parts(tx) == _parts(Tx(sim.plan, sim.state, later))
    assert tx.changes.previous_status is RunStatus.WAITING
    # what the last event handed over is not emptied under its holder
    assert handed == (["effect"], ["row"], {"a"}, {"fan": {"fan[0]"}}, {"a"}, {"out"},
                      {"ctx:run-1:a@1": b"{}"})


def test_a_renewed_working_area_keeps_nothing_of_its_last_event_until_its_next() -> None:
    """The run task renews its working area once a batch is done with it (at no time yet),
    then sets only the next batch's time: nothing of the last event is kept alive while
    the run waits, and it is then as a new one for the next."""
    sim = Sim(workflow(step("a")))
    sim.start()
    tx = Tx(sim.plan, sim.state, T0)
    tx.effects.append("effect")  # type: ignore[arg-type]
    tx.rows.append("row")  # type: ignore[arg-type]
    tx.changes.payloads["ctx:run-1:a@1"] = b"{" + b" " * 1000 + b"}"
    handed = (tx.effects, tx.rows, tx.changes.payloads)

    tx.renew(T0)
    assert (tx.effects, tx.rows, tx.changes.payloads) == ([], [], {})
    assert handed == (["effect"], ["row"], {"ctx:run-1:a@1": b"{" + b" " * 1000 + b"}"})
    later = T0 + timedelta(seconds=1)
    tx.now = later
    assert _parts(tx) == _parts(Tx(sim.plan, sim.state, later))
