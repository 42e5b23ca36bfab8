"""The router's subscription table: ``_Table.sole``, the subjects a delivery hands to one
``listen`` callback alone, against what the table's listeners say after every change."""

from __future__ import annotations

import random

import pytest

from cordtrio.backends.nng.table import _Sub, _Table


def expected_sole(table: _Table) -> dict[str, _Sub]:
    """The subjects whose delivery (``Delivery.deliver``'s loops over ``match``) reaches one
    callback subscription and nothing else; none while a wildcard subscription exists
    (the table does not look for the subjects it may match)."""
    sole: dict[str, _Sub] = {}
    if table.wild:
        return sole
    for subject in table.exact:
        members = [sub for listeners in table.match(subject)
                   for sub in (*listeners.plain,
                               *(m for g in listeners.groups.values() for m in g.members))]
        if len(members) == 1 and members[0].callback is not None:
            sole[subject] = members[0]
    return sole


@pytest.mark.parametrize("seed", range(40))
def test_the_sole_listeners_follow_every_change_of_the_table(seed: int) -> None:
    rng = random.Random(seed)
    table = _Table()
    subs: list[_Sub] = []
    for _ in range(60):
        if subs and rng.random() < 0.4:
            table.remove(subs.pop(rng.randrange(len(subs))))
        else:
            subject = rng.choice(["a", "b", "a.x", "a.>", ">"] + ["a", "b", "a.x"] * 3)
            queue = rng.choice(["", "", "g", "h"])
            callback = (lambda packet: None) if rng.random() < 0.7 else None
            sub = _Sub(subject, queue, callback=callback)
            table.add(sub)
            subs.append(sub)
        assert table.sole == expected_sole(table)
        for sub in table.sole.values():
            assert sub.group is None or sub.group.turn == 0
