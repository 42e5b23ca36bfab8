"""The run write of an engine step as one purpose-built Lua script (``STEP_SCRIPT``).

An engine step writes a few run-hash fields (the header, the finished and the dispatched
step, a context entry), appends its timeline events, moves the run's index entries, and —
for a dispatch — stores the next job's input at ``ctx:<job>`` (``RunChanges.payloads``).
``save_run_changes`` sends all of it as the arguments of one ``EVALSHA``, batched with the
other runs' calls into one pipeline (and one merged ``EVALSHA``: ``script_merge``), and the
script does the minimum on the server:

1. fenced writes (multi-engine mode) first check the lease: ``GET`` — not held, nothing is
   written and the holder is returned;
   then the write's token (``SAVED``, unique per write, written with the fields): when the
   hash already holds it, this very write was applied before — its reply was lost with the
   connection and the adapter sent it again — and nothing is applied twice (the timeline
   ``RPUSH`` is not idempotent); ``HGET``;
2. when the store knows which fields the run's hash holds (``field_mirror``: the run object
   it created, read or last wrote, the header among the written fields), it knows which
   written fields are new and gives those a rank, and the script reads nothing: ``HDEL``
   (removed parts), one ``HSET`` (values and new ranks), and a check that ``HSET`` added
   as many fields as predicted. If not, either the hash holds nothing but what was just
   written — the run was gone: the key is deleted again and the run reported missing — or
   the run changed behind the store's back: the written fields that should have had a
   rank are given one if they have none (an ``HMGET`` and an ``HSET``) and the store drops
   what it knew (``resynced``);
3. otherwise one ``HMGET`` reads whether the run exists (its ``header``) and which of the
   written fields already have an insertion rank — a missing run is reported before
   anything is written (nothing to undo), and a rank is written only for a field that has
   none — then ``HDEL`` and one ``HSET``;
4. one ``RPUSH`` of the timeline events, ``LTRIM``-ed only once the list outgrows the cap;
5. the index moves (``ZREM`` from the previous status zset, ``ZADD`` to the new one and
   ``wf:runs:all``), the other commands the index and retention queue (``SADD``/``SREM``
   of the active set, ``EXPIRE``), sent as plain commands (length, then words), as
   ``leases.commands_if_absent`` does, and the payload ``SET``s.

The arguments are laid out for the packer: each one costs the client ~1-2k instructions
to pack (a float score ~7k), and an engine step sends one write per step (a chain step:
15 arguments, 44 before). So the write's token, counts, payload TTL, index score, first
rank, which ranked fields are new and whether the header and the map marker are written
travel as one space-separated argument (its ``shape``); the script derives the rest — the
``saved`` field, each ranked field's rank (the write's first rank plus the field's place
among them, in write order: the consecutive ranks ``_rank`` would have given one by one)
and its ``ord:`` name, the ranks of deleted fields, the run's id as the index member
(taken from its key), the timeline cap, the ``header`` field's name and the
``context["steps"]`` map marker — and the index and payload writes are sections of keys
rather than whole commands. Long argument lists are sent in slices (Lua's ``unpack``
stops near 8,000 values).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cordtrio.ports import TIMELINE_CAP

from .keys import CTX_STEPS_MARKER, EMPTY_MAP, HEADER, INPUT, ORD, SAVED, run_key, timeline_key
from .leases import lease_key
from .run_hash import FieldOps

_UNRANKED = frozenset((HEADER, INPUT, CTX_STEPS_MARKER, SAVED))
"""Fields without a rank (``CTX_STEPS_MARKER`` only as the map marker ``{}``)."""

NOT_FOUND = 2
"""``STEP_SCRIPT``'s first reply element when the run does not exist (1: written, with
``resynced`` — 1 when the known field names were wrong — as the second element; 0: the
lease is held by someone else, whose name is the second element)."""

NO_VALUE = "-"
"""An absent word of the ``shape`` argument (no token, no known count, no TTL, no score)."""

STEP_SCRIPT = f"""
local CHUNK = 4000
local CAP = {TIMELINE_CAP}
local ORD = '{ORD}'
local SAVED = '{SAVED}'
local RUN_ID_AT = {len(run_key("")) + 1}
local HEADER, STEPS_MAP, EMPTY_MAP = '{HEADER}', '{CTX_STEPS_MARKER}', '{EMPTY_MAP.decode()}'
""" + """
local NEW = string.byte('n')
local function call_in_slices(cmd, key, list)
  local last
  for i = 1, #list, CHUNK do
    local part = {}
    for j = i, math.min(i + CHUNK - 1, #list) do part[#part + 1] = list[j] end
    last = redis.call(cmd, key, unpack(part))
  end
  return last
end
local owner = ARGV[1]
if owner ~= '' then
  local holder = redis.call('GET', KEYS[2])
  if holder ~= owner then
    return {0, holder or ''}
  end
end
local shape = {}
for word in string.gmatch(ARGV[2], '%S+') do shape[#shape + 1] = word end
local token = shape[1]
if token ~= '-' and redis.call('HGET', KEYS[1], SAVED) == token then
  return {1, 1}
end
local nr, nu, nd, nt = tonumber(shape[2]), tonumber(shape[3]), tonumber(shape[4]),
  tonumber(shape[5])
local nz, nx, npay = tonumber(shape[6]), tonumber(shape[7]), tonumber(shape[8])
local expected = tonumber(shape[9])
local ttl, score, first, flags = shape[10], shape[11], shape[12], shape[13]
local with_header = string.find(shape[14], 'h', 1, true) ~= nil
local with_steps_map = string.find(shape[14], 'm', 1, true) ~= nil
local r0 = 3                 -- ranked (field, value) pairs, in write order
local h0 = r0 + 2 * nr       -- the header's value (with_header)
local u0 = with_header and h0 + 1 or h0  -- other unranked (field, value) pairs
local d0 = u0 + 2 * nu       -- deleted fields (with their ranks)
local t0 = d0 + nd           -- timeline events
local z0 = t0 + nt           -- index zsets the run is added to (with the score)
local x0 = z0 + nz           -- index zsets the run is removed from
local p0 = x0 + nx           -- (key, payload) pairs
local c0 = p0 + 2 * npay     -- plain commands (length, then words), to the end
-- the j-th ranked field's rank (from 0): first + j, in decimal (ranks have 19 digits,
-- more than a Lua number holds exactly: the last 9 are added apart)
local function rank_at(j)
  if #first <= 15 then
    return string.format('%d', tonumber(first) + j)
  end
  local high = tonumber(string.sub(first, 1, -10))
  local low = tonumber(string.sub(first, -9)) + j
  return string.format('%d%09d', high + math.floor(low / 1e9), low % 1e9)
end
local function ranked(fields)
  local got = {}
  for i = 1, #fields, CHUNK do
    local part = {}
    for j = i, math.min(i + CHUNK - 1, #fields) do part[#part + 1] = fields[j] end
    local reply = redis.call('HMGET', KEYS[1], unpack(part))
    for j = 1, #part do got[i + j - 1] = reply[j] end
  end
  return got
end
-- a rank for each known ranked field (flag 'k') without one; with_header: also reads
-- whether the run exists (false if not, nothing added)
local function rank_if_absent(sets, with_header)
  local names, at = {}, {}
  if with_header then names[1] = 'header' end
  for j = 0, nr - 1 do
    if string.byte(flags, j + 1) ~= NEW then
      names[#names + 1] = ORD .. ARGV[r0 + 2 * j]
      at[#names] = j
    end
  end
  if #names == 0 then return true end
  local got = ranked(names)
  if with_header and not got[1] then return false end
  for i, j in pairs(at) do
    if not got[i] then
      sets[#sets + 1] = names[i]
      sets[#sets + 1] = rank_at(j)
    end
  end
  return true
end
local resynced = 0
local sets = {}
for j = 0, nr - 1 do
  local field = ARGV[r0 + 2 * j]
  sets[#sets + 1] = field
  sets[#sets + 1] = ARGV[r0 + 2 * j + 1]
  if string.byte(flags, j + 1) == NEW then
    sets[#sets + 1] = ORD .. field
    sets[#sets + 1] = rank_at(j)
  end
end
if with_header then
  sets[#sets + 1] = HEADER
  sets[#sets + 1] = ARGV[h0]
end
for j = u0, d0 - 1 do sets[#sets + 1] = ARGV[j] end
if with_steps_map then
  sets[#sets + 1] = STEPS_MAP
  sets[#sets + 1] = EMPTY_MAP
end
if token ~= '-' then
  sets[#sets + 1] = SAVED
  sets[#sets + 1] = token
end
if not expected then
  if not rank_if_absent(sets, true) then
    return {2}
  end
end
if nd > 0 then
  local dels = {}
  for j = d0, t0 - 1 do
    dels[#dels + 1] = ARGV[j]
    dels[#dels + 1] = ORD .. ARGV[j]
  end
  call_in_slices('HDEL', KEYS[1], dels)
end
if not expected then
  if #sets > 0 then
    call_in_slices('HSET', KEYS[1], sets)
  end
else
  local added = 0
  for i = 1, #sets, CHUNK do
    local part = {}
    for j = i, math.min(i + CHUNK - 1, #sets) do part[#part + 1] = sets[j] end
    added = added + redis.call('HSET', KEYS[1], unpack(part))
  end
  if added ~= expected then
    if redis.call('HLEN', KEYS[1]) == #sets / 2 then
      redis.call('DEL', KEYS[1])
      return {2}
    end
    local more = {}
    rank_if_absent(more, false)
    if #more > 0 then
      call_in_slices('HSET', KEYS[1], more)
    end
    resynced = 1
  end
end
if nt > 0 then
  local docs = {}
  for j = t0, z0 - 1 do docs[#docs + 1] = ARGV[j] end
  if call_in_slices('RPUSH', KEYS[3], docs) > CAP then
    redis.call('LTRIM', KEYS[3], -CAP, -1)
  end
end
if nz + nx > 0 then
  local id = string.sub(KEYS[1], RUN_ID_AT)
  for j = x0, p0 - 1 do redis.call('ZREM', ARGV[j], id) end
  for j = z0, x0 - 1 do redis.call('ZADD', ARGV[j], score, id) end
end
local i = c0
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
for j = p0, c0 - 1, 2 do
  if ttl == '-' then
    redis.call('SET', ARGV[j], ARGV[j + 1])
  else
    redis.call('SET', ARGV[j], ARGV[j + 1], 'EX', ttl)
  end
end
return {1, resynced}
"""


class StepArgs:
    """Collects ``STEP_SCRIPT``'s arguments; doubles as the pipeline ``_queue_index`` and
    ``_queue_retention`` queue their commands on (the index moves of the run become the
    script's index sections, the rest plain commands at the end). ``on_command`` (the
    adapter's, for ``testing.CommandCounter``) hears every command the script will run,
    but the conditional ``LTRIM``."""

    def __init__(self, owner: str, on_command: Callable[[tuple[Any, ...]], None] | None,
                 token: str = "", run_id: str = "") -> None:
        self._owner = owner
        self._token = token  # written as the ``SAVED`` field by the script
        self._run_id = run_id  # the only member of the index moves
        self._on_command = on_command
        self._ranked: list[Any] = []  # (field, value) pairs of ranked fields, in order
        self._flags = ""  # per ranked field: "n" ranked now, "k" ranked if it has no rank
        self._first_rank = 0  # the first ranked field's rank; the others follow it
        self._header: bytes | None = None  # its value (the script adds its name)
        self._steps_map = False  # the map marker written (the script writes it)
        self._values: list[Any] = []  # (field, value) pairs of other unranked fields
        self._deletes: list[str] = []
        self._timeline: list[bytes] = []
        self._added_to: list[str] = []
        self._removed_from: list[str] = []
        self._score: float | None = None
        self._payloads: list[Any] = []
        self._ttl: int | None = None
        self._tail: list[Any] = []
        self._expected: int | None = None
        self.after: set[str] | None = None
        """With ``known`` field names: the names the hash holds once the script wrote."""
        self.plain = True
        """Every argument is a ``str``, ``bytes``, ``int`` or ``float`` (``script``'s
        ``plain``): all are built here but the payloads a step dispatches, checked then."""

    def fields(self, ops: FieldOps, ranks: Callable[[int], int],
               known: set[str] | None = None) -> None:
        """The hash writes of ``ops``: values; each ranked field, in write order, the next
        of consecutive ranks (``ranks(count)`` gives the first) — written for a field
        written anew, written if absent for any other; deletions (the script drops their
        ranks). With ``known`` (the field names the hash holds, ``field_mirror``), a field
        is new when it has no rank among them, and the script reads nothing: it checks
        that ``HSET`` added as many fields as that predicts."""
        ranked, values = self._ranked, self._values
        fresh = ops.fresh
        flags = ""
        new_ranks: list[str] = []
        for field, value in ops.writes.items():
            if field in _UNRANKED and (field != CTX_STEPS_MARKER or value == EMPTY_MAP):
                # unranked: a map "steps" always comes last
                if field == HEADER:
                    self._header = value
                elif field == CTX_STEPS_MARKER:
                    self._steps_map = True
                else:
                    values += (field, value)
                continue
            ranked += (field, value)
            ord_field = ORD + field
            if (known is not None and ord_field not in known) or field in fresh:
                flags += "n"
                new_ranks.append(ord_field)
            else:
                flags += "k"
        if flags:
            self._flags = flags
            self._first_rank = ranks(len(flags))
        deletes = ops.deletes
        if deletes:
            self._deletes += deletes
        if known is not None:
            after = known  # the mirror's own set, updated in place: a failed write drops it
            if deletes:
                after.difference_update(deletes, [ORD + f for f in deletes])
            held = len(after)
            after.update(values[::2])
            if self._header is not None:
                after.add(HEADER)
            if self._steps_map:
                after.add(CTX_STEPS_MARKER)
            if ranked:
                after.update(ranked[::2])
                after.update(new_ranks)
            if self._token:
                after.add(SAVED)
            self._expected = len(after) - held  # the written names the hash lacked
            self.after = after

    def timeline(self, docs: list[bytes]) -> None:
        self._timeline = docs

    def payloads(self, payloads: Mapping[str, bytes], ttl: int | None) -> None:
        self._ttl = ttl
        report = self._on_command
        for key, data in payloads.items():
            if type(data) is not bytes or type(key) is not str:
                self.plain = False  # the adapter checks every argument (``script``)
            self._payloads += (key, data)
            if report is not None:
                report(("SET", key, data) if ttl is None else ("SET", key, data, "EX", ttl))

    # the pipeline methods the index and retention moves use
    def zadd(self, name: str, mapping: Mapping[str, float]) -> None:
        """Add the run to the index ``name`` with the write's score (one per write)."""
        for member, score in mapping.items():
            if member != self._run_id or (self._score is not None and score != self._score):
                raise ValueError("a step write adds its own run to indexes, with one score")
            self._score = score
            self._added_to.append(name)
            if self._on_command is not None:
                self._on_command(("ZADD", name, score, member))

    def zrem(self, name: str, *members: str) -> None:
        """Remove the run from the index ``name``."""
        if members != (self._run_id,):
            raise ValueError("a step write removes its own run from indexes")
        self._removed_from.append(name)
        if self._on_command is not None:
            self._on_command(("ZREM", name, *members))

    def sadd(self, name: str, *members: str) -> None:
        self._command("SADD", name, *members)

    def srem(self, name: str, *members: str) -> None:
        self._command("SREM", name, *members)

    def expire(self, name: str, seconds: int) -> None:
        self._command("EXPIRE", name, seconds)

    def _command(self, *args: Any) -> None:
        self._tail += (len(args), *args)
        if self._on_command is not None:
            self._on_command(args)

    def argv(self, run_key: str) -> list[Any]:
        """The script's arguments (after the commands above were queued)."""
        report = self._on_command
        if report is not None:
            self._report(report, run_key)
        ranked, values, deletes, timeline = (
            self._ranked, self._values, self._deletes, self._timeline)
        added_to, removed_from, payloads = self._added_to, self._removed_from, self._payloads
        n, expected, ttl, score = COUNTS, self._expected, self._ttl, self._score
        header = self._header
        shape = (f"{self._token or NO_VALUE} {n[len(ranked) >> 1]} {n[len(values) >> 1]}"
                 f" {n[len(deletes)]} {n[len(timeline)]}"
                 f" {n[len(added_to)]} {n[len(removed_from)]} {n[len(payloads) >> 1]}"
                 f" {NO_VALUE if expected is None else n[expected]}"
                 f" {NO_VALUE if ttl is None else n[ttl]}"
                 f" {NO_VALUE if score is None else repr(score)}"
                 f" {self._first_rank} {self._flags or NO_VALUE}"
                 f" {_MARKS[header is not None, self._steps_map]}")
        return [self._owner, shape, *ranked, *(() if header is None else (header,)), *values,
                *deletes, *timeline, *added_to, *removed_from, *payloads, *self._tail]

    def _report(self, report: Callable[[tuple[Any, ...]], None], run_key: str) -> None:
        """The commands the script runs before the plain ones (those were reported as
        they were queued; the order of the counts does not matter)."""
        if self._owner:
            report(("GET", "lease"))
        if self._token:
            report(("HGET", run_key, SAVED))
        if self._expected is None:  # else the script reads nothing (unless it must resync)
            report(("HMGET", run_key, HEADER))
        if self._deletes:
            report(("HDEL", run_key, *self._deletes))
        if self._values or self._ranked or self._token or self._header or self._steps_map:
            report(("HSET", run_key, *self._ranked, *self._values))
        if self._timeline:
            report(("RPUSH", "timeline", *self._timeline))


_MARKS = {(False, False): NO_VALUE, (True, False): "h", (False, True): "m", (True, True): "hm"}
"""The ``shape``'s last word: the header written ("h", its value alone, before the other
unranked fields), the ``context["steps"]`` map marker written ("m", no argument)."""


class _Texts(dict[int, str]):
    """The decimal texts of counts, cached (a step write's ``shape`` has a dozen numbers,
    the merged script's head a few per call: ``script_merge``)."""

    def __missing__(self, n: int) -> str:
        text = str(n)
        if len(self) < 4096:
            self[n] = text
        return text


COUNTS = _Texts()


def step_keys(run_id: str) -> list[str]:
    """``STEP_SCRIPT``'s keys: the run's hash, lease and timeline (the plain commands name
    theirs in the arguments)."""
    return [run_key(run_id), lease_key(run_id), timeline_key(run_id)]


__all__ = ["COUNTS", "NOT_FOUND", "STEP_SCRIPT", "StepArgs", "step_keys"]
