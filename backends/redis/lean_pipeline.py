"""A batch of commands sent as one non-transactional pipeline, without redis-py's per-call layers.

``redis.asyncio.client.Pipeline.execute`` wraps each round trip in layers the batcher does
not need: a ``Retry`` (the adapter retries a lost connection itself), observability hooks
(timers, counters), the ``HIMPORT`` preflight, and per command the method that builds its
arguments (``deprecated_args`` wrappers, option parsing) and ``parse_response``'s
bookkeeping. Measured on W1 over Redis these were a sizeable share of the engine's CPU for
a pipeline of a few commands. ``execute`` does what ``Pipeline._execute_pipeline`` does —
``pack_commands`` of every command, one ``send_packed_command``, one ``read_response`` per
command, the client's response callback applied, a failed command's reply its
``ResponseError`` (``raise_on_error=False``) — on a connection of the client's own pool
(so URL options, AUTH, TLS, health checks and reconnects stay redis-py's).

``command`` builds a call's ``(args, options)`` as redis-py's command method would: the
batcher's hot commands (``GET``, ``SET`` with ``ex``, ``MGET``, ``EVALSHA``, ``EXISTS``) directly,
anything else by queueing it on a ``Pipeline`` used only to record it. The tests check both
give the same commands and replies as redis-py's ``Pipeline``.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions as rx
from redis.client import EMPTY_RESPONSE, NEVER_DECODE

Command = tuple[tuple[Any, ...], dict[str, Any]]
"""What redis-py queues per pipelined command: its arguments and its parse options."""

_DROPPED = frozenset({NEVER_DECODE, EMPTY_RESPONSE, "keys"})  # not callback options


def command(client: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Command:
    """``client.<method>(*args, **kwargs)`` as the ``(args, options)`` redis-py would queue."""
    if method == "get" and len(args) == 1 and not kwargs:
        return ("GET", args[0]), {}
    if method == "evalsha" and not kwargs:
        return ("EVALSHA", *args), {}
    if method == "set" and len(args) == 2 and (not kwargs or (
            len(kwargs) == 1 and "ex" in kwargs and type(kwargs["ex"]) in (int, type(None)))):
        ex = kwargs.get("ex")
        return (("SET", *args) if ex is None else ("SET", *args, "EX", ex)), {}
    if method == "exists" and args and not kwargs:  # a run's presence check
        return ("EXISTS", *args), {}
    if method == "mget" and len(args) == 1 and not kwargs and type(args[0]) is list and args[0]:
        return ("MGET", *args[0]), {}
    recorder = type(client).pipeline(client, transaction=False)  # the class's: unhooked
    getattr(recorder, method)(*args, **kwargs)
    (queued,) = recorder.command_stack
    return queued


class KeptConnections:
    """Connections of the client's pool kept between batches, up to ``keep`` idle.

    Borrowing from redis-py's ``BlockingConnectionPool`` for each batch (a condition, a
    timeout scope, a readiness probe, observability hooks, and as much to give it back)
    cost more than sending a small pipeline. The batcher has at most a few pipelines in
    flight, so it keeps that many connections; ``release_all`` gives them back before the
    pool closes. A kept connection still checks its health (``PING`` after
    ``health_check_interval``) and reconnects after a drop, as redis-py's do; a
    connection found disconnected goes back to the pool instead."""

    def __init__(self, pool: Any, keep: int) -> None:
        self._pool = pool
        self._keep = keep
        self._idle: list[Any] = []
        self._open = True

    async def take(self) -> Any:
        """An idle kept connection, else one from the pool."""
        if self._idle:
            return self._idle.pop()
        return await self._pool.get_connection()

    async def give_back(self, conn: Any) -> None:
        """Keep ``conn`` for the next batch, or return it to the pool."""
        if self._open and len(self._idle) < self._keep and conn.is_connected:
            self._idle.append(conn)
        else:
            await self._pool.release(conn)

    async def release_all(self) -> None:
        """Return every kept connection to the pool and keep none from now on."""
        self._open = False
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._pool.release(conn)


async def execute(client: Any, commands: list[Command], connections: KeptConnections
                  ) -> list[Any]:
    """Send ``commands`` in one round trip on a connection of ``connections``; their
    replies, a failed command's reply being its ``ResponseError``. Any other error (a lost
    connection, a timeout, cancellation) drops the connection, whose unread replies would
    otherwise reach the next user, and propagates."""
    callbacks = client.response_callbacks
    conn = await connections.take()
    try:
        await conn.send_packed_command(conn.pack_commands([args for args, _ in commands]))
        replies: list[Any] = []
        for args, options in commands:
            try:
                if options and NEVER_DECODE in options:
                    reply = await conn.read_response(disable_decoding=True)
                else:
                    reply = await conn.read_response()
                callback = callbacks.get(args[0])
                if callback is not None:
                    reply = callback(reply, **{k: v for k, v in options.items()
                                               if k not in _DROPPED})
            except rx.ResponseError as exc:
                reply = options.get(EMPTY_RESPONSE, exc)
            replies.append(reply)
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await connections.give_back(conn)
    return replies


__all__ = ["Command", "KeptConnections", "command", "execute"]
