"""gateway.transport.native_rest.cork: the first write of an iteration leaves at once, the rest at its end,
each connection's bytes in order."""

from __future__ import annotations

import asyncio
from typing import cast

from gateway.transport.native_rest.cork import Cork, CorkedOutput


class Sink:
    """The part of a transport the output uses, recording what was written."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.writes.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closing


def output(cork: Cork) -> tuple[CorkedOutput, Sink]:
    sink = Sink()
    out = CorkedOutput(cork)
    out.attach(cast(asyncio.Transport, sink))
    return out, sink


def test_first_write_leaves_at_once_the_rest_at_the_end_of_the_iteration_in_order() -> None:
    async def main() -> None:
        cork = Cork(asyncio.get_running_loop())
        (a, sink_a), (b, sink_b) = output(cork), output(cork)
        a.send(b"a1")
        assert sink_a.writes == [b"a1"]  # nothing else this iteration: straight out
        b.send(b"b1")
        a.send(b"a2")
        a.send(b"a3")
        assert sink_b.writes == [] and sink_a.writes == [b"a1"]  # corked
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sink_a.writes == [b"a1", b"a2a3"]
        assert sink_b.writes == [b"b1"]
        b.send(b"b2")  # a new iteration: the first write leaves at once again
        assert sink_b.writes == [b"b1", b"b2"]

    asyncio.run(main())


def test_flush_sends_what_is_corked_now_and_a_gone_connection_drops_it() -> None:
    async def main() -> None:
        cork = Cork(asyncio.get_running_loop())
        (a, sink_a), (b, sink_b), (c, sink_c) = output(cork), output(cork), output(cork)
        a.send(b"first")
        b.send(b"before close")
        b.flush()  # what a connection does before it closes
        assert sink_b.writes == [b"before close"]
        c.send(b"lost")
        c.attach(None)  # the connection went away
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sink_b.writes == [b"before close"]  # not sent twice
        assert sink_c.writes == []
        assert sink_a.writes == [b"first"]

    asyncio.run(main())
