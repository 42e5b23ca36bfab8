"""Run leases and per-run command inboxes in Redis (``cordtrio.ports.RunLeases``).

Keys (all under ``cordtrio:``, apart from SPEC §11's ``wf:``/``ctx:``/``res:``/``schema:``):

==================================  ======  ================================================
``cordtrio:lease:<run>``            string  the owner (an engine id), ``PX`` = the lease TTL
``cordtrio:inbox:<run>``            list    encoded commands for the run, oldest first
``cordtrio:processing:<run>``       list    commands taken by an owner, not yet acknowledged
``cordtrio:inboxes``                set     run ids whose inbox or processing list may hold
                                            commands
``cordtrio:engine:<owner>:wake``    list    run ids whose inbox the owner must look at
``cordtrio:commands``               list    run ids with commands and no owner (any engine)
==================================  ======  ================================================

Every check-and-act is one Lua script (atomic on the server): acquiring (``SET`` when free
or already ours), renewing many leases (``PEXPIRE`` those still ours — one round trip for all
of an engine's runs), releasing (compare-and-delete; a non-empty inbox is then queued for any
engine; a run write that releases does the same: ``hand_on_lua``) and pushing a command
(append, then wake the holder read in the same script, or queue the run for any engine — so
a command is never left with nobody told). The inbox is at-least-once:
``take_commands`` moves the inbox onto the run's processing list (``RENAME`` when that is
empty) and returns the processing list, and ``ack_commands`` trims it (``LTRIM``, fenced by
the lease) once the batch that applied them is persisted — so commands an owner took and
never persisted (it died, or lost its lease) are re-applied by the next owner.
``wait_wakeups`` is one ``BLPOP`` over the engine's wake list and the shared queue (it
holds one pooled connection while it waits).

Inboxes and wake lists expire (``INBOX_TTL_SECONDS`` after their last push), so an engine
that never comes back leaves nothing behind for long. The push script names the owner's wake
key from the lease's value, so the layout is for a single Redis server, not Redis Cluster.

Fenced writes (``RunChanges.lease_owner``): the run write's own script checks the lease
first (``step_write.py``), in the same round trip; with ``RunChanges.release_lease`` (a
finished run's last write) it releases the lease at its end, as ``release_lease`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .adapter import RedisAdapter
from .keys import SAVED
from .run_hash import text

PREFIX = "cordtrio:"
COMMANDS_QUEUE = PREFIX + "commands"
INBOXES = PREFIX + "inboxes"
INBOX_TTL_SECONDS = 7 * 24 * 3600


_LEASE = PREFIX + "lease:"


def lease_key(run_id: str) -> str:
    return _LEASE + run_id


_INBOX = PREFIX + "inbox:"
_PROCESSING = PREFIX + "processing:"


def inbox_key(run_id: str) -> str:
    return _INBOX + run_id


def processing_key(run_id: str) -> str:
    return _PROCESSING + run_id


def wake_key(owner: str) -> str:
    return PREFIX + "engine:" + owner + ":wake"


_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""


def hand_on_lua(lease: str, inbox: str, processing: str, queue: str, run_id: str) -> str:
    """Lua that drops the lease (its holder checked already) and, when the run's inbox or
    processing list holds commands, queues the run for any engine: the release of
    ``RELEASE_SCRIPT`` and of a run write that releases (``step_write``). The arguments
    are Lua expressions (``KEYS[1]``...)."""
    return f"""redis.call('DEL', {lease})
if redis.call('EXISTS', {inbox}, {processing}) > 0 then
  redis.call('RPUSH', {queue}, {run_id})
end"""


RELEASE_SCRIPT = f"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
{hand_on_lua("KEYS[1]", "KEYS[2]", "KEYS[4]", "KEYS[3]", "ARGV[2]")}
  return 1
end
return 0
"""

_TAKE = """
local unpack = unpack or table.unpack
local held = redis.call('LLEN', KEYS[2])
local items = redis.call('LRANGE', KEYS[1], 0, -1)
if #items > 0 then
  if held == 0 then
    redis.call('RENAME', KEYS[1], KEYS[2])
  else
    for i = 1, #items, 1000 do
      redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
    end
    redis.call('DEL', KEYS[1])
  end
  redis.call('EXPIRE', KEYS[2], ARGV[2])
elseif held == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
  return {}
end
if held == 0 then
  return items
end
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

_ACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('LTRIM', KEYS[2], ARGV[2], -1)
if redis.call('EXISTS', KEYS[2], KEYS[3]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[3])
end
return 1
"""

_PUSH = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[2])
local owner = redis.call('GET', KEYS[2])
if owner then
  local wake = ARGV[3] .. owner .. ':wake'
  redis.call('RPUSH', wake, ARGV[2])
  redis.call('EXPIRE', wake, ARGV[4])
  return owner
end
redis.call('RPUSH', KEYS[3], ARGV[2])
return false
"""


MAX_SCRIPT_COMMAND_ARGS = 4000
"""Longer commands are split (Lua's ``unpack`` stops near 8,000 values)."""
_PAIRED = {"HSET", "ZADD"}  # key, then (field value) / (score member) pairs
_LISTED = {"HDEL", "RPUSH", "LPUSH", "SADD", "SREM", "ZREM", "DEL"}  # key, then items


def _split(args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    if len(args) <= MAX_SCRIPT_COMMAND_ARGS:
        return [args]
    name = str(args[0]).upper()
    if name == "DEL":
        step, head, rest = MAX_SCRIPT_COMMAND_ARGS, args[:1], args[1:]
    elif name in _PAIRED:
        step, head, rest = MAX_SCRIPT_COMMAND_ARGS - MAX_SCRIPT_COMMAND_ARGS % 2, args[:2], args[2:]
    elif name in _LISTED:
        step, head, rest = MAX_SCRIPT_COMMAND_ARGS, args[:2], args[2:]
    else:
        raise ValueError(f"redis command {name} with {len(args)} arguments cannot be split")
    return [head + rest[i:i + step] for i in range(0, len(rest), step)]


def _packed(redis: RedisAdapter, head: list[Any],
            commands: Iterable[tuple[Any, ...]]) -> list[Any]:
    """``head``, then each command (its argument tuple, as redis-py would send it: the
    name, then its words) as its length and its words (split when long): the arguments of
    ``IF_ABSENT_SCRIPT``. The adapter's ``on_command`` (``testing.CommandCounter``) is told
    each command."""
    argv: list[Any] = head
    append, extend = argv.append, argv.extend
    hook = redis.on_command
    for args in commands:
        if hook is not None:
            hook(args)
        if len(args) <= MAX_SCRIPT_COMMAND_ARGS:
            append(len(args))
            extend(args)
            continue
        for part in _split(args):
            append(len(part))
            extend(part)
    return argv


IF_ABSENT_SCRIPT = """
local unpack = unpack or table.unpack
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], '""" + SAVED + """') == ARGV[3] then
    return 1
  end
  return 0
end
local done = 1
if ARGV[1] ~= '' then
  if not redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2], 'NX') then
    if redis.call('GET', KEYS[2]) == ARGV[1] then
      redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
    elseif ARGV[4] ~= '' then
      return 3
    else
      done = 2
    end
  end
end
local i = 5
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return done
"""
"""Only if ``KEYS[1]`` does not exist (else 0 — or 1 when its ``saved`` field holds the
token ``ARGV[3]``: this very write was applied before, its reply lost): take the lease
``KEYS[2]`` for ``ARGV[1]`` (unless it is empty) for ``ARGV[2]`` ms, then run the
commands packed from ``ARGV[5]`` on; 1, or 2 when another owner held the lease (the
commands ran all the same) — 3, nothing written, when ``ARGV[4]`` is not empty (the lease
must come with the create)."""

CREATED, CREATED_UNLEASED, NOT_LEASED = 1, 2, 3
"""``commands_if_absent``'s replies when it wrote, or (``NOT_LEASED``) wrote nothing for
want of the lease (0: the key existed, nothing written)."""


async def commands_if_absent(
    redis: RedisAdapter, what: str, key: str, commands: Iterable[tuple[Any, ...]],
    lease: tuple[str, str, float] | None = None, *, token: str = "",
    lease_required: bool = False,
) -> int:
    """Run ``commands`` (argument tuples: ``("HSET", key, field, value, ...)``) in one Lua
    script, only if ``key`` does not exist: a create in one round trip, atomic like
    ``WATCH``/``MULTI``/``EXEC`` and, unlike it, batched with other calls
    (``RedisAdapter.script``). The commands are built as tuples, not queued on a pipeline
    (or a stand-in for one): a create is done once per run, and redis-py's command methods
    cost several times more than the tuples they make. ``lease`` =
    (lease key, owner, ttl): the owner takes that lease in the same script (``SET NX PX``).
    0 if ``key`` existed (nothing written), ``CREATED``, or ``CREATED_UNLEASED`` when another
    owner held the lease — ``NOT_LEASED`` instead, nothing written, with
    ``lease_required``. ``token``: the write's own (the commands write it to the hash's
    ``saved`` field): a ``key`` holding it was created by this very write, sent before
    (``CREATED``, nothing written again)."""
    flags = [token, "1" if lease_required else ""]
    if lease is None:
        keys, head = [key], ["", 0, *flags]
    else:
        lease_key_, owner, ttl = lease
        keys, head = [key, lease_key_], [owner, _ms(ttl), *flags]
    return int(await redis.script(what, key, IF_ABSENT_SCRIPT, keys,
                                  _packed(redis, head, commands)))


def _ms(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError(f"lease ttl must be positive, got {ttl}")
    return max(1, round(ttl * 1000))


class RedisRunLeases:
    """Mixin of ``RedisStore``: the ``RunLeases`` methods over its ``RedisAdapter``."""

    _redis: RedisAdapter

    async def _script(self, what: str, source: str, keys: list[str], args: list[Any]) -> Any:
        return await self._redis.script(what, keys[0] if keys else "", source, keys, args)

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        """A free lease (the usual case: a run that just started) is taken with one
        ``SET NX PX``; one held already (by ``owner``: extended) takes the script."""
        key, ms = lease_key(run_id), _ms(ttl)
        if await self._redis.call("acquire lease", key, "set", key, owner, px=ms, nx=True):
            return True
        got = await self._script("acquire lease", _ACQUIRE, [key], [owner, ms])
        return bool(got)

    async def renew_leases(self, owner: str, run_ids: Sequence[str], ttl: float) -> set[str]:
        ids = list(run_ids)
        if not ids:
            return set()
        lost = await self._script("renew leases", _RENEW, [lease_key(i) for i in ids],
                                  [owner, _ms(ttl)])
        return {ids[int(i) - 1] for i in lost}

    async def release_lease(self, run_id: str, owner: str) -> None:
        key = _LEASE + run_id  # (the keys written out here: no calls)
        await self._redis.script(
            "release lease", key, RELEASE_SCRIPT,
            [key, _INBOX + run_id, COMMANDS_QUEUE, _PROCESSING + run_id], [owner, run_id])

    async def lease_owner(self, run_id: str) -> str | None:
        key = lease_key(run_id)
        value = await self._redis.call("get lease", key, "get", key)
        return None if value is None else text(value)

    async def unleased(self, run_ids: Sequence[str]) -> list[str]:
        ids = list(run_ids)
        if not ids:
            return []
        values = await self._redis.call("check leases", lease_key(ids[0]), "mget",
                                        [lease_key(i) for i in ids])
        return [i for i, v in zip(ids, values, strict=True) if v is None]

    async def push_command(self, run_id: str, data: bytes) -> str | None:
        owner = await self._script(
            "queue command", _PUSH,
            [inbox_key(run_id), lease_key(run_id), COMMANDS_QUEUE, INBOXES],
            [bytes(data), run_id, PREFIX + "engine:", INBOX_TTL_SECONDS])
        return None if owner is None else text(owner)

    async def push_unassigned(self, run_id: str, data: bytes) -> None:
        key = inbox_key(run_id)
        await self._redis.pipeline("queue command", key, [
            ("rpush", (key, bytes(data))),
            ("expire", (key, INBOX_TTL_SECONDS)),
            ("sadd", (INBOXES, run_id)),
            ("rpush", (COMMANDS_QUEUE, run_id)),
        ])

    async def take_commands(self, run_id: str) -> list[bytes]:
        """A run that is not in ``cordtrio:inboxes`` has no commands (every push adds it,
        and only an emptied inbox and processing list remove it): one ``SISMEMBER`` then,
        the take script otherwise."""
        if not await self._redis.call("take commands", INBOXES, "sismember", INBOXES, run_id):
            return []
        items = await self._script(
            "take commands", _TAKE, [inbox_key(run_id), processing_key(run_id), INBOXES],
            [run_id, INBOX_TTL_SECONDS])
        return [bytes(item) for item in items or []]

    async def ack_commands(self, run_id: str, owner: str, count: int) -> bool:
        done = await self._script(
            "acknowledge commands", _ACK,
            [lease_key(run_id), processing_key(run_id), inbox_key(run_id), INBOXES],
            [owner, max(int(count), 0), run_id])
        return bool(done)

    async def runs_with_commands(self, limit: int = 1000) -> list[str]:
        members = await self._redis.call("list inboxes", INBOXES, "smembers", INBOXES)
        return sorted(text(m) for m in members)[:max(limit, 0)]

    async def wait_wakeups(self, owner: str, timeout: float) -> list[str]:
        key = wake_key(owner)
        reply = await self._redis.call("wait for wake-ups", key, "blpop",
                                       [key, COMMANDS_QUEUE], timeout=max(timeout, 0.01))
        if not reply:
            return []
        return [text(reply[1])]


__all__ = ["COMMANDS_QUEUE", "CREATED", "CREATED_UNLEASED", "IF_ABSENT_SCRIPT", "NOT_LEASED",
           "RELEASE_SCRIPT", "RedisRunLeases", "commands_if_absent", "hand_on_lua", "inbox_key",
           "lease_key", "processing_key", "wake_key"]
