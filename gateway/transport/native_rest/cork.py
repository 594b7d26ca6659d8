"""Corked writes for the HTTP/1.1 engine: the first write of an event-loop iteration leaves at
once, the writes after it in the same iteration leave together at its end.

Each connection still gets its own write, since HTTP/1.1 has nothing to batch across
connections. What changes is when the writes happen. Sent as each answer is made, they reach
the peers one by one, tens of microseconds apart: a peer on another core wakes for the first,
handles it, sleeps again and is woken for the next, and on a virtual machine each of those
wake-ups goes through the hypervisor (perf showed the wake-up path as the largest kernel
symbol of the REST proxy). Sent back to back, they find the peer still awake. In interleaved
A/B runs of the benchmark this took 2-6 % off the CPU per request, with the same latency at
concurrency 1, where the first write of each iteration is the only one. The HTTP/2 engine
corks per connection for the same reason (gateway.transport.native_grpc.sending).

What must always hold: a connection's bytes leave in the order it wrote them; a connection
that closes sends what it had corked first; nothing waits more than one turn of the loop.
"""

from __future__ import annotations

import asyncio


class Cork:
    """The connections with corked bytes in this iteration; one per listener or pool.

    The first write of an iteration goes out at once, so a lone call (concurrency 1) waits for
    nothing; the writes after it in the same iteration are corked until its end."""

    __slots__ = ("_loop", "_pending", "_open")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[CorkedOutput] = []
        self._open = False  # a write went out in this iteration: cork the next ones

    def hold(self, out: CorkedOutput) -> bool:
        """Whether `out`'s write must wait for the end of the iteration (it is then flushed
        there); False for the iteration's first write, which goes out at once."""
        if self._open:
            self._pending.append(out)
            return True
        self._open = True
        self._loop.call_soon(self._flush)  # the end of this iteration
        return False

    def _flush(self) -> None:
        self._open = False
        pending, self._pending = self._pending, []
        for out in pending:
            out.flush()


class CorkedOutput:
    """The write side of one connection: `send` corks, `flush` writes."""

    __slots__ = ("_cork", "_transport", "_parts")

    def __init__(self, cork: Cork) -> None:
        self._cork = cork
        self._transport: asyncio.Transport | None = None
        self._parts: list[bytes] = []

    def attach(self, transport: asyncio.Transport | None) -> None:
        self._transport = transport
        if transport is None:
            self._parts = []  # the connection is gone: nothing can be sent any more

    def send(self, data: bytes) -> None:
        # Behind bytes this connection already corked, or behind an earlier write of this
        # iteration: corked.
        if self._parts or self._cork.hold(self):
            self._parts.append(data)
            return
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(data)

    def flush(self) -> None:
        parts = self._parts
        if not parts:
            return
        self._parts = []
        t = self._transport
        if t is None or t.is_closing():
            return
        if len(parts) == 1:
            t.write(parts[0])
        else:
            t.writelines(parts)
