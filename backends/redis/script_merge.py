"""Several calls of the store's Lua scripts, issued in the same Trio tick, as one ``EVALSHA``.

The batcher (``batcher.py``) already sends a tick's commands as one pipeline; with hundreds
of runs in flight most of them are ``EVALSHA``s of the same few scripts (an engine step's
run write, a run create, a lease release). ``MergedScripts`` turns those into one call of a
script that holds each mergeable script as a Lua function and runs every call in turn: the
server parses and dispatches one command instead of one per call, and redis-py packs and
parses one. Calls stay independent:

* each runs in ``pcall``: an error (a key of the wrong type, say) is that call's alone, and
  the calls after it still run, as they would have as separate scripts (a script that
  fails part-way keeps what it wrote before the error either way: Redis does not roll back);
* each gets its own reply, or its error as a ``ResponseError`` with the server's message,
  which the batcher translates for its caller as it would a lone call's.

Argument layout of the merged script: ``ARGV[1]`` = its *head*, one space-separated text: the
number of calls ``n``, then per call its function's number, its key count and its argument
count (``3 n`` numbers); then every call's arguments one after the other; ``KEYS`` = every
call's keys one after the other. Its reply: the calls that failed (``{call number, error
message, ...}``, usually empty), then each call's reply (nil for a failed one), so that the
usual reply is split with one slice, no item looked at.

The head is one argument, of texts of cached counts, rather than ``3 n + 1`` integer
arguments: the client packs each argument (~1.6k instructions with hiredis) and turns each
integer into its decimal text first (~0.9k more); a batch of an engine step's write and a
payload write carried seven such integers per step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rx

from .leases import IF_ABSENT_SCRIPT, RELEASE_SCRIPT
from .step_write import COUNTS, STEP_SCRIPT

_MAIN = """
local head = {}
for word in string.gmatch(ARGV[1], '%S+') do head[#head + 1] = tonumber(word) end
local n = head[1]
local ki, ai = 1, 2
local failed = {}
local out = {failed}
for c = 0, n - 1 do
  local f = F[head[2 + 3 * c]]
  local nk, na = head[3 + 3 * c], head[4 + 3 * c]
  local keys, args = {unpack(KEYS, ki, ki + nk - 1)}, {}
  if na <= 4000 then
    args = {unpack(ARGV, ai, ai + na - 1)}
  else  -- unpack stops near 8,000 values
    for j = 1, na do args[j] = ARGV[ai + j - 1] end
  end
  ki, ai = ki + nk, ai + na
  local ok, res = pcall(f, keys, args)
  if ok then
    if res == nil then res = false end  -- (nil would end the reply's array: false is nil)
    out[c + 2] = res
  else
    if type(res) == 'table' then res = res.err or res.message or 'script error' end
    failed[#failed + 1] = c + 1
    failed[#failed + 1] = tostring(res)
    out[c + 2] = false
  end
end
return out
"""


Member = tuple[str, Sequence[Any], Sequence[Any]]
"""One call in a merged call: its script's function number (as text), its keys, its
arguments."""


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


class MergedScripts:
    """The merged script of ``sources`` (scripts that read their keys and arguments only
    from ``KEYS``/``ARGV``), and how to build its call and read its reply."""

    def __init__(self, sources: Sequence[str]) -> None:
        self.sources = tuple(sources)
        parts = ["local F = {}"]
        for i, body in enumerate(sources, start=1):
            parts.append(f"F[{i}] = function(KEYS, ARGV)\n{body}\nend")
        parts.append(_MAIN)
        self.source = "\n".join(parts)
        self.sha = _sha(self.source)
        self.numbers = {_sha(body): str(i) for i, body in enumerate(sources, start=1)}
        """Each script's function number in the merged script (by SHA), as the head's text."""
        self.by_source = {body: str(i) for i, body in enumerate(sources, start=1)}
        """The same numbers by script text (``RedisAdapter.script``'s calls: no SHA needed)."""

    def mergeable(self, method: str, args: tuple[Any, ...]) -> bool:
        """Is this batched call an ``EVALSHA`` of one of the scripts?"""
        return method == "evalsha" and args[0] in self.numbers

    def member(self, call: tuple[Any, ...]) -> Member:
        """An ``evalsha`` argument tuple (``(sha, numkeys, *keys, *args)``) of one of the
        scripts as a member of a merged call (slices of the tuple: no unpacked copy)."""
        end = 2 + int(call[1])
        return self.numbers[call[0]], call[2:end], call[end:]

    def call_args(self, calls: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
        """The ``EVALSHA`` arguments of the merged script for these ``evalsha`` argument
        tuples (``(sha, numkeys, *keys, *args)``)."""
        return self.merged_args([self.member(call) for call in calls])

    def merged_args(self, members: Sequence[Member]) -> tuple[Any, ...]:
        """The ``EVALSHA`` arguments of the merged script running ``members`` in turn."""
        keys: list[Any] = []
        head: list[str] = [COUNTS[len(members)]]
        rest: list[Any] = []
        for number, call_keys, call_args in members:
            keys += call_keys
            rest += call_args
            head += (number, COUNTS[len(call_keys)], COUNTS[len(call_args)])
        return (self.sha, COUNTS[len(keys)], *keys, " ".join(head), *rest)

    @staticmethod
    def replies(reply: Any, count: int) -> list[Any]:
        """Each call's reply, or its error as a ``redis.exceptions.ResponseError``."""
        if (not isinstance(reply, list) or len(reply) != count + 1
                or not isinstance(reply[0], list) or len(reply[0]) % 2):
            raise rx.ResponseError(f"merged script: unexpected reply {reply!r:.200}")
        failed = reply[0]
        out = reply[1:]
        for i in range(0, len(failed), 2):  # (usually none)
            number, value = failed[i], failed[i + 1]
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            out[number - 1] = rx.ResponseError(text)
        return out


SET_EX_SCRIPT = "return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])"
"""``SET key value EX ttl`` as a script: how a batch's payload writes ride in the merged
script (``set_ex_args``) instead of costing a command (packing, a reply to read) each."""

SET_EX_SHA = _sha(SET_EX_SCRIPT)

MERGED = MergedScripts((STEP_SCRIPT, IF_ABSENT_SCRIPT, RELEASE_SCRIPT, SET_EX_SCRIPT))
"""The store's scripts that a batch merges: an engine step's run write, a run create (or
any ``commands_if_absent``), a lease release; and payload writes (``SET_EX_SCRIPT``)."""


def set_ex_args(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[Any, ...] | None:
    """The ``EVALSHA`` arguments of ``SET_EX_SCRIPT`` doing the call ``client.<method>(*args,
    **kwargs)`` if it is a ``SET key value ex=<seconds>`` (whose reply, ``OK``, the caller
    gets as ``True``, as redis-py gives it); else None. The TTL may also come third by
    position, with no keyword argument (a write whose reply goes to a callback,
    ``RedisPayloadStore.put_result_then``: ``call_then`` takes none)."""
    if method != "set":
        return None
    if len(args) == 3 and not kwargs:
        ex = args[2]
    elif len(args) == 2 and len(kwargs) == 1:
        ex = kwargs.get("ex")
    else:
        return None
    if type(ex) is not int or ex <= 0:  # an invalid TTL fails alone, with SET's own error
        return None
    return (SET_EX_SHA, 1, args[0], args[1], COUNTS[ex])  # the TTL as text: packed as is


__all__ = ["MERGED", "SET_EX_SCRIPT", "SET_EX_SHA", "MergedScripts", "set_ex_args"]
