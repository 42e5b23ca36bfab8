"""``RunChanges``: its written-out ``__init__`` behaves as the dataclass one would."""

from __future__ import annotations

import dataclasses

from cordtrio.model import RunStatus
from cordtrio.ports import RunChanges


def test_defaults_are_fresh_containers_per_instance() -> None:
    first, second = RunChanges(), RunChanges()
    first.steps.add("a")
    first.children.setdefault("p", set()).add("p[0]")
    first.context_steps.add("a")
    first.context_keys.add("k")
    first.payloads["ctx:j"] = b"{}"
    assert second == RunChanges()
    assert not second
    assert (second.header, second.previous_status, second.lease_owner) == (False, None, None)


def test_every_field_is_taken_by_name_and_by_position() -> None:
    values = {f.name: f"value of {f.name}" for f in dataclasses.fields(RunChanges)}
    by_name = RunChanges(**values)  # type: ignore[arg-type]
    by_position = RunChanges(*values.values())  # type: ignore[arg-type]
    for name, value in values.items():
        assert getattr(by_name, name) == value
        assert getattr(by_position, name) == value
    assert by_name == by_position


def test_equality_and_repr_still_come_from_the_dataclass() -> None:
    changes = RunChanges(header=True, steps={"s"}, previous_status=RunStatus.RUNNING)
    assert changes == RunChanges(True, {"s"}, previous_status=RunStatus.RUNNING)
    assert changes != RunChanges(header=True)
    assert repr(changes).startswith("RunChanges(header=True, steps={'s'}")
