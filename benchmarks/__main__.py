"""cordtrio benchmarks: workloads x backends x sizes, peers in the same invocation.

    python -m benchmarks                                  # every workload, every backend
    python -m benchmarks --workload w1,w2 --backend memory --size w2=1000,10000 --repeat 5
    python -m benchmarks --peers celery,prefect --out results.json --plot results.png

Workloads (no-op handlers returning a small dict):
  w1  chains: N runs x 5 dependent steps, all in flight
  w2  fan-out: one run, for_each over N items, max_parallel 100, then a join
  w3  wide DAG: N runs of 50 parallel branches x 4 steps joining at the end
  w4  waiting runs: N runs parked on an approval (memory per waiting run), then approved
      and drained
  w5  retries: N runs x 5 steps, every step fails once (backoff 1 s, real clock)
Backends: memory (worker in-process), redis (+ memory bus, worker in-process), redis-nng
(+ nng bus, worker in another process). Redis backends and the Celery peer share one
redis-server the harness starts on a free 127.0.0.1 port (no persistence) and stops.

Sizes: --size N[,N...] for every selected workload, --size wN=N[,N...] for one, or
--size wN@BACKEND=N[,N...] for one on one backend or peer (repeatable). Defaults keep a
full run (every workload and backend, Celery, 3 repetitions) under ~10 minutes on a busy
2-core machine -- memory: w1 1000, w2 1000+10000, w3 30, w4 10000, w5 200; Redis backends
and peers: w1 100, w2 1000, w3 3, w4 200, w5 50. The full sizes:
  --size w1=1000 --size w2=1000,10000,100000 --size w3=100 --size w4=10000 --size w5=500
Figures: median steps/s and runs/s with min-max over the repetitions, dispatch->result
latency p50/p99, peak RSS, Redis commands per step (INFO commandstats). Details:
docs/benchmarks.md. Real clock: numbers on a shared machine are noisy.

Two versions in one invocation: --against DIR (another checkout) --against-python PY
measures every repetition with DIR's own harness too, right before or after this one's
(alternating; each sample in a fresh process), and prints this/other ratios
(benchmarks/against.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .against import Against, against_rows, against_table, python_path, this_checkout
from .backends import BACKENDS, NEEDS_REDIS
from .measure import RedisStats, Sample, run_sample
from .peers import Peer, all_peers
from .plot import PlotUnavailable, plot
from .report import print_report, summarize, write_json
from .workloads import WORKLOADS, Workload

DEFAULT_OUT = "benchmarks/results/latest.json"


def _csv(value: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if items == ["all"]:
        return list(allowed)
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"{what}: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)}")
    return items


Sizes = dict[tuple[str, str], tuple[int, ...]]
"""Explicit sizes by (workload, backend); backend "" applies to every backend."""


def parse_sizes(specs: list[str], workloads: list[str]) -> Sizes:
    """``--size`` values: ``N,N`` (every workload), ``wN=N,N`` (one workload) or
    ``wN@BACKEND=N,N`` (one workload on one backend or peer, e.g. ``w2@memory``)."""
    sizes: Sizes = {}
    for spec in specs:
        target, _, numbers = spec.rpartition("=")
        try:
            values = tuple(int(n) for n in numbers.split(",") if n.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"--size {spec!r}: sizes must be integers") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"--size {spec!r}: sizes must be >= 1")
        name, _, backend = target.partition("@")
        if name and name not in WORKLOADS:
            raise argparse.ArgumentTypeError(f"--size {spec!r}: unknown workload {name!r}")
        for w in [name] if name else workloads:
            sizes[(w, backend)] = values
    return sizes


def sizes_for(workload: Workload, backend: str, explicit: Sizes) -> tuple[int, ...]:
    """``--size`` for this workload and backend, else for this workload, else the default
    (memory: the full sizes; Redis backends and peers: smaller ones)."""
    for key in ((workload.name, backend), (workload.name, "")):
        if key in explicit:
            return explicit[key]
    return workload.default_sizes if backend == "memory" else workload.remote_sizes


def plan(workloads: list[str], backends: list[str], explicit: Sizes
         ) -> list[tuple[Workload, str, int]]:
    """(workload, backend, size) in measuring order."""
    return [(WORKLOADS[name], backend, size) for name in workloads for backend in backends
            for size in sizes_for(WORKLOADS[name], backend, explicit)]


@contextmanager
def redis_server(console: Console, needed: bool) -> Iterator[RedisStats | None]:
    """The harness's redis-server (None, with the reason printed, if it cannot start)."""
    if not needed:
        yield None
        return
    try:
        from cordtrio.backends.redis.testing import run_redis_server
    except ImportError as exc:
        console.print(f"[yellow]Redis backends and Celery skipped: cannot import {exc.name} "
                      "(pip install 'cordtrio[redis]')")
        yield None
        return
    with ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="cordtrio-bench-"))
        try:
            server = stack.enter_context(run_redis_server(directory))
        except Exception as exc:
            console.print(f"[yellow]Redis backends and Celery skipped: {exc}")
            server = None
        if server is None:
            yield None
            return
        stats = RedisStats(server.url)
        stack.callback(stats.close)
        console.print(f"redis-server on {server.host}:{server.port} (no persistence)")
        yield stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="all", help="w1,w2,w3,w4,w5 or all")
    parser.add_argument("--backend", default="all", help="memory,redis,redis-nng or all")
    parser.add_argument("--size", action="append", default=[],
                        help="N[,N...], wN=N[,N...] or wN@BACKEND=N[,N...] (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--peers", default="", help="celery,prefect (default: none)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"JSON results ({DEFAULT_OUT})")
    parser.add_argument("--plot", default="", help="PNG plot of cost per step vs size")
    parser.add_argument("--against", default="",
                        help="another checkout measured in the same repetitions (alternated)")
    parser.add_argument("--against-python", default="",
                        help="the Python that runs --against's harness (default: this one)")
    args = parser.parse_args(argv)
    peer_factories = all_peers()
    try:
        workloads = _csv(args.workload, list(WORKLOADS), "--workload")
        backends = _csv(args.backend, BACKENDS, "--backend")
        peer_names = _csv(args.peers, list(peer_factories), "--peers") if args.peers else []
        sizes = parse_sizes(args.size, workloads)
        if args.repeat < 1:
            raise argparse.ArgumentTypeError("--repeat must be >= 1")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.against_python and not args.against:
        parser.error("--against-python needs --against")
    against = Against(args.against, python_path(args.against_python or sys.executable)) \
        if args.against else None

    console = Console()
    if not console.is_terminal:  # a file or pipe: wide enough for the tables
        console = Console(width=170)
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        console.print(f"[yellow]{message}")

    peers: list[Peer] = []
    for name in peer_names:
        peer = peer_factories[name]()
        reason = peer.unavailable()
        if reason:
            note(f"peer {name} skipped: {reason}")
        else:
            peers.append(peer)
    needs_redis = any(b in NEEDS_REDIS for b in backends) or any(p.needs_redis for p in peers)
    samples: list[Sample] = []
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(console, needs_redis))
        if redis is None:
            dropped = [b for b in backends if b in NEEDS_REDIS]
            if dropped:
                note(f"backends {', '.join(dropped)} skipped: no redis-server")
            backends = [b for b in backends if b not in NEEDS_REDIS]
            for p in [p for p in peers if p.needs_redis]:
                note(f"peer {p.name} skipped: no redis-server")
                peers.remove(p)
        todo = plan(workloads, backends, sizes)
        peer_todo = [(p, WORKLOADS[w], size) for p in peers for w in workloads
                      if w in p.workloads for size in sizes_for(WORKLOADS[w], p.key, sizes)]
        total = (len(todo) + len(peer_todo)) * args.repeat
        progress = stack.enter_context(Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=False))
        overall = progress.add_task("samples", total=total)
        current = progress.add_task("", total=1)
        # Round by round: each round measures every (workload, backend, size) once, then
        # each peer's, so that a ratio compares samples taken minutes apart at most, not a
        # first half of the invocation with its second (these machines' load drifts).
        failed: set[tuple[str, str, int]] = set()
        for rep in range(args.repeat):
            for workload, backend, size in todo:
                if (workload.name, backend, size) in failed:
                    continue
                expected = _expected_steps(workload, size)
                progress.update(current, description=f"{workload.name} {backend} size {size:,} "
                                f"rep {rep + 1}/{args.repeat}", total=expected, completed=0)

                def tick(done: int, expected: int = expected) -> None:
                    progress.update(current, completed=min(done, expected))

                if against is not None:  # both versions, fresh processes, alternated
                    pair = [this_checkout(sys.executable), against]
                    for checkout in pair[::-1] if rep % 2 else pair:
                        _sample_checkout(checkout, workload, backend, size, rep,
                                         args.repeat, samples, progress, note)
                    progress.advance(overall)
                    continue
                try:
                    sample = trio.run(run_sample, workload, backend, size, redis, tick)
                    sample.round = rep
                    samples.append(sample)
                    _log_sample(progress, sample, rep, args.repeat)
                except Exception as exc:
                    note(f"{workload.name} on {backend} size {size} failed: "
                         f"{type(exc).__name__}: {exc}")
                    console.print(traceback.format_exc(limit=3), style="dim")
                    progress.advance(overall, args.repeat - rep)
                    failed.add((workload.name, backend, size))
                    continue
                progress.advance(overall)
            peer_todo = _run_peers(peer_todo, rep, args.repeat, redis, progress, overall,
                                   current, samples, note)

    summaries = summarize(samples)
    titles = {name: w.summary for name, w in WORKLOADS.items()}
    ratios = print_report(console, summaries, titles, [p.name for p in peers])
    versus = against_rows(summaries) if against is not None else []
    if against is not None:
        console.print(against_table(versus, against.checkout))
    settings: dict[str, Any] = {"workloads": workloads, "backends": backends,
                                "repeat": args.repeat, "peers": [p.name for p in peers],
                                "sizes": {f"{w}@{b}" if b else w: list(v)
                                          for (w, b), v in sizes.items()},
                                "against": args.against,
                                "against_python": against.python if against else ""}
    out = Path(args.out)
    write_json(out, summaries, ratios, settings, notes, versus)
    console.print(f"results written to {out}")
    if args.plot:
        try:
            plot(Path(args.plot), summaries, titles)
            console.print(f"plot written to {args.plot}")
        except PlotUnavailable as exc:
            console.print(f"[yellow]plot skipped: {exc}")
    return 0


def _log_sample(progress: Progress, s: Sample, rep: int, repeat: int) -> None:
    """One line per finished sample (above the live bar; the record when output is a file)."""
    progress.console.print(
        f"{s.workload} {s.backend} size {s.size:,} rep {rep + 1}/{repeat}: "
        f"{s.steps_per_s:,.0f} steps/s in {s.seconds:.1f} s", style="dim", highlight=False)


def _sample_checkout(checkout: Against, workload: Workload, backend: str, size: int,
                     rep: int, repeat: int, samples: list[Sample], progress: Progress,
                     note: Any) -> None:
    """A checkout's sample of this repetition (a failure is noted, the rest goes on)."""
    try:
        sample = checkout.sample(workload.name, backend, size)
    except Exception as exc:
        note(f"{workload.name} on {backend} size {size} by {checkout.checkout} failed: {exc}")
        return
    sample.round = rep
    samples.append(sample)
    _log_sample(progress, sample, rep, repeat)


def _expected_steps(workload: Workload, size: int) -> int:
    per_run = len(workload.workflow().steps)
    return size + 1 if workload.name == "w2" else size * per_run


def _run_peers(todo: list[tuple[Peer, Workload, int]], rep: int, repeat: int,
               redis: RedisStats | None, progress: Progress, overall: Any, current: Any,
               samples: list[Sample], note: Any) -> list[tuple[Peer, Workload, int]]:
    """Round ``rep`` of the peers: each in a session of its own (its workers started for
    the round: a peer's workers must not outlive it, as the next round's samples flush the
    shared redis-server), one sample of each of its workloads. Returns what is left to
    measure in later rounds: a workload that failed is dropped, and one a session that
    failed did not run (its remaining rounds counted done)."""
    by_peer: dict[str, list[tuple[Peer, Workload, int]]] = {}
    for item in todo:
        by_peer.setdefault(item[0].name, []).append(item)
    left: list[tuple[Peer, Workload, int]] = []
    for name, items in by_peer.items():
        peer = items[0][0]
        progress.update(current, description=f"starting {name}", total=1, completed=0)
        untried = list(items)
        try:
            with peer.session(redis, note) as session:
                while untried:
                    item = untried.pop(0)
                    _, workload, size = item
                    progress.update(current, description=f"{workload.name} {name} size "
                                    f"{size:,} rep {rep + 1}/{repeat}", completed=0)
                    try:
                        done = session.run(workload.name, size, 1)
                    except Exception as exc:  # this workload only: the others go on
                        note(f"peer {name}: {workload.name} size {size} failed: "
                             f"{type(exc).__name__}: {exc}")
                        progress.advance(overall, repeat - rep)
                        continue
                    for sample in done:
                        sample.round = rep
                        samples.append(sample)
                        _log_sample(progress, sample, rep, repeat)
                    progress.advance(overall)
                    left.append(item)
        except Exception as exc:  # the session itself: what it did not run is dropped
            note(f"peer {name} failed: {type(exc).__name__}: {exc}")
            progress.advance(overall, len(untried) * (repeat - rep))
    return left


def _interrupt_on_sigterm() -> None:
    """SIGTERM (``timeout``, a CI runner) ends the harness as Ctrl-C does, through its
    context managers: the redis-server and the peers' worker processes it started are
    stopped, not left running."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


if __name__ == "__main__":
    _interrupt_on_sigterm()
    raise SystemExit(main())
