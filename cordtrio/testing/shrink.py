"""Shrinking: make a failing seed as small as it can be while it still fails the same way.

A seed that fails usually does a lot that has nothing to do with the bug: six runs, three
workflows of eight steps, two engine crashes, eleven kinds of faults. ``shrink(failure,
options)`` replays the seed with less, one change at a time, and keeps each change after
which the seed still fails *the same way* (the same invariant; for the oracle, the same
rule). In passes, until a whole pass changes nothing:

1. one engine instead of several; no cancels, reruns or ``Client`` calls;
2. fewer engine crashes (none, then one less);
3. each fault kind that is on, switched off (``disabled``);
4. one workflow instead of several (``keep_workflows``);
5. fewer runs (one, half, one less);
6. each step of each workflow dropped, last first (``drop_steps``; ``cuts``).

Each replay is an ordinary ``simulate`` (or ``run_under_faults``) call, so the result is
deterministic: the same failure shrinks to the same reproduction, and its options replay
it exactly (``Shrunk.options``; ``Shrunk.flags()`` for ``cordtrio simulate``, which
shrinks a failing seed by itself). Replays that are not the failure being shrunk are
bounded by ``Budget.steps`` (``TRY_STEPS`` Trio task steps; a normal seed takes a few
thousand), so a change that leaves runs stuck costs little.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..model import Workflow
from .cuts import step_ref
from .mix import resolve_mix
from .report import SimulationFailure, SimulationReport
from .scenario import Budget
from .simulation import crash_count, scenario_workflows, simulate

__all__ = ["TRY_STEPS", "Shrunk", "same_failure", "shrink"]

TRY_STEPS = 1_000_000
"""Trio task steps a replay may take while shrinking (unless the failure is itself about
a stuck seed: ``liveness``, ``budget``)."""

Runner = Callable[..., SimulationReport]


def rule_of(failure: SimulationFailure) -> str:
    """The invariant that failed, and for the oracle its rule (``oracle/justified``)."""
    if failure.invariant == "oracle" and failure.detail.startswith("rule "):
        return f"oracle/{failure.detail[5:].split(':', 1)[0]}"
    return failure.invariant


def same_failure(a: SimulationFailure, b: SimulationFailure) -> bool:
    """Whether ``b`` is the failure ``a`` is (the same invariant, the same oracle rule)."""
    return rule_of(a) == rule_of(b)


@dataclass
class Shrunk:
    """A minimal reproduction: ``simulate(seed, **options)`` fails with ``failure``."""

    seed: int
    options: dict[str, Any]
    failure: SimulationFailure
    tries: int = 0
    changes: list[str] = field(default_factory=list)
    """What each kept change did, in order (``runs 6 -> 2``, ``fault drop off``...)."""

    def flags(self) -> list[str]:
        """The ``cordtrio simulate`` options the shrinking changed (add them to the
        seed's own: ``--faults``, ``--store``...)."""
        o = self.options
        out = ["--runs", str(o["runs"]), "--crashes", str(o["crash"])]
        if o.get("engines", 1) != 1:
            out += ["--engines", str(o["engines"])]
        for kind in o.get("disabled", ()):
            out += ["--no-fault", kind]
        if not o.get("operator", True):
            out.append("--no-operator")
        for wf in o.get("keep_workflows", ()):
            out += ["--keep-workflow", wf]
        for ref in o.get("drop_steps", ()):
            out += ["--drop-step", ref]
        return out

    def call(self) -> str:
        """The Python call that replays it."""
        shown = {k: v for k, v in self.options.items()
                 if k not in ("workflows", "handlers", "inputs", "budget")}
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(shown.items()))
        return f"simulate({self.seed}, {args})"

    def __str__(self) -> str:
        done = "; ".join(self.changes) or "nothing could be removed"
        return (f"seed {self.seed} shrunk in {self.tries} replays: {done}\n"
                f"  still fails: invariant {self.failure.invariant}: {self.failure.detail}")


def shrink(failure: SimulationFailure, options: Mapping[str, Any], *,
           run: Runner = simulate, workflows: Sequence[Workflow] | None = None,
           max_tries: int = 300) -> Shrunk:
    """Shrink ``failure`` (of ``run(failure.seed, **options)``; ``run`` defaults to
    ``simulate``) to a ``Shrunk``. ``workflows``: the workflows ``run`` uses when they
    are not in ``options`` (``run_under_faults``'s); default: ``options["workflows"]``,
    else the seed's random ones. At most ``max_tries`` replays."""
    seed = failure.seed
    state = dict(options)
    state.setdefault("runs", 6)
    state["crash"] = crash_count(seed, state.get("crash", True))
    state.setdefault("engines", 1)
    state["disabled"] = tuple(state.get("disabled", ()))
    state.setdefault("operator", True)
    state["keep_workflows"] = tuple(state.get("keep_workflows", ()))
    state["drop_steps"] = tuple(state.get("drop_steps", ()))
    base = workflows if workflows is not None else state.get("workflows")
    try_budget = state.get("budget") or Budget()
    if failure.invariant not in ("liveness", "budget"):
        try_budget = replace(try_budget, steps=min(try_budget.steps, TRY_STEPS))
    shrunk = Shrunk(seed, state, failure)

    def attempt(change: dict[str, Any], what: str) -> bool:
        if shrunk.tries >= max_tries:
            return False
        shrunk.tries += 1
        candidate = {**shrunk.options, **change}
        try:
            run(seed, **{**candidate, "budget": try_budget})
        except SimulationFailure as again:
            if same_failure(failure, again):
                # replayed with the seed's own budget, the same (deterministic) failure
                shrunk.options, shrunk.failure = candidate, again
                shrunk.changes.append(what)
                return True
        except Exception:  # a cut the engine or the validation rejects: not kept
            return False
        return False

    while shrunk.tries < max_tries:
        if not any([attempt(change, what)
                    for change, what in _changes(shrunk, seed, base)]):
            break
    return shrunk


def _changes(shrunk: Shrunk, seed: int, base: Sequence[Workflow] | None
             ) -> Iterator[tuple[dict[str, Any], str]]:
    """The changes of one pass, smallest scenario first, each from the options as they
    are when it is tried (the generator reads ``shrunk.options`` lazily)."""
    o = shrunk.options
    if o["engines"] > 1:
        yield {"engines": 1}, f"engines {o['engines']} -> 1"
    if shrunk.options["operator"]:
        yield {"operator": False}, "no cancels, reruns or Client calls"
    crashes = shrunk.options["crash"]
    if crashes > 0:
        yield {"crash": 0}, f"crashes {crashes} -> 0"
    if crashes > 1 and shrunk.options["crash"] == crashes:
        yield {"crash": crashes - 1}, f"crashes {crashes} -> {crashes - 1}"
    o = shrunk.options
    mix = resolve_mix(seed, o.get("faults", "light"), disabled=o["disabled"],
                      worker=o.get("worker"), store_fail_rate=o.get("store_fail_rate"),
                      store_ambiguous_rate=o.get("store_ambiguous_rate"),
                      store_read_fail_rate=o.get("store_read_fail_rate"))
    for kind in mix.enabled:
        yield ({"disabled": (*shrunk.options["disabled"], kind)}, f"fault {kind} off")
    kept = [wf.id for wf in _workflows(shrunk, seed, base)]
    if len(kept) > 1:
        for wf_id in kept:
            if len(_workflows(shrunk, seed, base)) > 1:
                yield ({"keep_workflows": (wf_id,), "drop_steps": _drops_in(shrunk, wf_id)},
                       f"workflow {wf_id} only")
    runs = shrunk.options["runs"]
    for fewer in sorted({1, runs // 2, runs - 1}):
        if 0 < fewer < shrunk.options["runs"]:
            yield {"runs": fewer}, f"runs {shrunk.options['runs']} -> {fewer}"
    for wf in _workflows(shrunk, seed, base):
        for sid in reversed(list(wf.steps)):
            if len(wf.steps) > 1:
                ref = step_ref(wf.id, sid)
                yield ({"drop_steps": (*shrunk.options["drop_steps"], ref)},
                       f"step {ref} dropped")


def _workflows(shrunk: Shrunk, seed: int, base: Sequence[Workflow] | None) -> list[Workflow]:
    o = shrunk.options
    return scenario_workflows(seed, base, o["keep_workflows"], o["drop_steps"])


def _drops_in(shrunk: Shrunk, wf_id: str) -> tuple[str, ...]:
    return tuple(r for r in shrunk.options["drop_steps"] if r.startswith(f"{wf_id}/"))
