"""The run write of an engine step as one purpose-built Lua script (``STEP_SCRIPT``).

An engine step writes a few run-hash fields (the header, the finished and the dispatched
step, a context entry), appends its timeline events, moves the run's index entries, and —
for a dispatch — stores the next job's input at ``ctx:<job>`` (``RunChanges.payloads``).
``save_run_changes`` sends all of it as the arguments of one ``EVALSHA``, batched with the
other runs' calls into one pipeline (and one merged ``EVALSHA``: ``script_merge``), and the
script does the minimum on the server:

1. fenced writes (multi-engine mode) first check the lease: ``GET`` — not held, nothing is
   written and the holder is returned (unless the write's token, below, says this very
   write was applied while it was held: a write that released the lease, sent again);
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
   ``leases.commands_if_absent`` does, and the payload ``SET``s;
6. a write that releases the lease (``RunChanges.release_lease``: a finished run's last
   write, fenced; its keys then include the run's inbox, processing list and the commands
   queue) drops it last, as ``leases.release_lease`` does (``DEL``; ``EXISTS`` of the
   inbox and processing list, and ``RPUSH`` of the run to the commands queue if either
   holds commands): the engine then sends no release of its own.

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

from collections.abc import Callable
from typing import Any

from cordtrio.ports import TIMELINE_CAP

from .keys import CTX_STEPS_MARKER, EMPTY_MAP, HEADER, ORD, SAVED, run_key, timeline_key
from .leases import COMMANDS_QUEUE, hand_on_lua, inbox_key, lease_key, processing_key

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
local shape = {}
for word in string.gmatch(ARGV[2], '%S+') do shape[#shape + 1] = word end
local token = shape[1]
if owner ~= '' then
  local holder = redis.call('GET', KEYS[2])
  if holder ~= owner then
    if token ~= '-' and redis.call('HGET', KEYS[1], SAVED) == token then
      return {1, 1}  -- applied while it was held (and released it, maybe): sent again
    end
    return {0, holder or ''}
  end
end
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
if #KEYS > 3 then
""" + hand_on_lua("KEYS[2]", "KEYS[4]", "KEYS[5]", "KEYS[6]",
                  "string.sub(KEYS[1], RUN_ID_AT)") + """
end
return {1, resynced}
"""


def report_step_commands(argv: list[Any], keys: list[str],
                         report: Callable[[tuple[Any, ...]], None]) -> None:
    """Tell ``report`` (the adapter's ``on_command``: ``testing.CommandCounter``) each
    command ``STEP_SCRIPT`` runs with ``keys`` (``step_keys``') and ``argv``
    (``step_argv``'s), read from the arguments as the script reads them; not the
    conditional ``LTRIM`` and ``RPUSH`` (of a run released with commands left), nor the
    reads of a resync."""
    key = keys[0]
    shape = argv[1].split()
    token, expected, ttl, score, marks = shape[0], shape[8], shape[9], shape[10], shape[13]
    nr, nu, nd, nt, nz, nx, npay = map(int, shape[1:8])
    at = 2 + 2 * nr
    ranked = argv[2:at]
    if "h" in marks:
        at += 1  # the header's value (the script adds its name)
    values = argv[at:at + 2 * nu]
    at += 2 * nu
    deletes = argv[at:at + nd]
    at += nd
    timeline = argv[at:at + nt]
    at += nt
    added, removed = argv[at:at + nz], argv[at + nz:at + nz + nx]
    at += nz + nx
    payloads = argv[at:at + 2 * npay]
    at += 2 * npay
    member = key[_RUN_KEY_PREFIX:]
    if argv[0]:
        report(("GET", "lease"))
    if token != NO_VALUE:
        report(("HGET", key, SAVED))
    if expected == NO_VALUE:  # else the script reads nothing (unless it must resync)
        report(("HMGET", key, HEADER))
    if deletes:
        report(("HDEL", key, *deletes))
    if ranked or values or token != NO_VALUE or marks != NO_VALUE:
        report(("HSET", key, *ranked, *values))
    if timeline:
        report(("RPUSH", "timeline", *timeline))
    for name in removed:
        report(("ZREM", name, member))
    for name in added:
        report(("ZADD", name, float(score), member))
    for i in range(0, len(payloads), 2):
        report(("SET", payloads[i], payloads[i + 1]) if ttl == NO_VALUE
               else ("SET", payloads[i], payloads[i + 1], "EX", int(ttl)))
    while at < len(argv):  # the plain commands: length, then words
        n = argv[at]
        report(tuple(argv[at + 1:at + 1 + n]))
        at += 1 + n
    if len(keys) > len(_KEY_PREFIXES):  # the lease released
        report(("DEL", keys[1]))
        report(("EXISTS", keys[3], keys[4]))


_RUN_KEY_PREFIX = len(run_key(""))


class _Texts(dict[int, str]):
    """The decimal texts of counts, cached (a step write's ``shape`` has a dozen numbers,
    the merged script's head a few per call: ``script_merge``)."""

    def __missing__(self, n: int) -> str:
        text = str(n)
        if len(self) < 4096:
            self[n] = text
        return text


COUNTS = _Texts()


_KEY_PREFIXES = (run_key(""), lease_key(""), timeline_key(""))
_RELEASE_PREFIXES = (inbox_key(""), processing_key(""))


def step_keys(run_id: str) -> list[str]:
    """``STEP_SCRIPT``'s keys: the run's hash, lease and timeline (the plain commands name
    theirs in the arguments). The key functions' prefixes joined here: one call per
    write, not four."""
    run, lease, timeline = _KEY_PREFIXES
    return [run + run_id, lease + run_id, timeline + run_id]


def releasing_step_keys(run_id: str) -> list[str]:
    """``STEP_SCRIPT``'s keys for a write that releases the lease (once per run): those of
    ``step_keys``, then the run's inbox and processing list and the commands queue."""
    run, lease, timeline = _KEY_PREFIXES
    inbox, processing = _RELEASE_PREFIXES
    return [run + run_id, lease + run_id, timeline + run_id, inbox + run_id,
            processing + run_id, COMMANDS_QUEUE]


__all__ = ["COUNTS", "NOT_FOUND", "STEP_SCRIPT", "releasing_step_keys", "report_step_commands",
           "step_keys"]
