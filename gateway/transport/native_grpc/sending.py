"""The sending half of an HTTP/2 connection: flow-controlled DATA, corked writes.

What must always hold: DATA never exceeds min(stream window, connection window); what does not
fit waits in its stream (`Stream.out`) and leaves, in order and before the stream's trailers,
when a WINDOW_UPDATE, a larger SETTINGS_INITIAL_WINDOW_SIZE or the transport's resume_writing
makes room; frames written outside a read leave together at the next loop iteration.
"""

from __future__ import annotations

import asyncio

from gateway.transport.native_grpc import frames as f
from gateway.transport.native_grpc.stream import Stream


class H2Output:
    """Write-side state and methods of H2Connection (which supplies `_maybe_forget`)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.conn_send_window = f.DEFAULT_WINDOW
        # output batching: frames produced while reading leave in one write
        self._in_read = False
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        self._flush_scheduled = False
        self._write_paused = False
        self._blocked: dict[int, Stream] = {}

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        if not self._in_read:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Corking: frames written outside a read (answers finished by tasks, requests sent
        by callers) leave together at the next loop iteration, so the answers to a burst of
        streams cost one syscall and one wake-up of the peer instead of one each. Profiles
        showed the per-stream writes as the largest single cost of the proxy."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        size, self._out_size = self._out_size, 0
        t = self.transport
        if t is None:
            return
        if len(out) == 1:
            t.write(out[0])
        elif size <= 262_144:
            t.write(b"".join(out))  # one buffer, one syscall; the copy is cheaper than a vector
        else:
            t.writelines(out)

    def send_frames(self, stream: Stream, head: bytes, data: bytes | None,
                    trailers: bytes | None) -> None:
        """Send a stream's header frames, then DATA (flow-controlled) and trailing header
        frames; END_STREAM is set on the last frame sent. `head` and `trailers` are complete
        encoded frames (see frames.headers_frames)."""
        parts: list[bytes | memoryview] = [head] if head else []
        if data:
            n = len(data)
            room = min(stream.send_window, self.conn_send_window)
            if n <= room and not self._write_paused and not stream.out:
                stream.send_window -= n
                self.conn_send_window -= n
                parts += f.data_frames(stream.id, data, trailers is None, self.peer_max_frame)
                data = None
            else:
                stream.out = memoryview(data)
                stream.out_end = trailers is None
                stream.out_trailers = trailers
                self._blocked[stream.id] = stream
                self._send_pending(stream, parts)
        if data is None and trailers is not None:
            parts.append(trailers)
        if stream.out is None:
            stream.local_closed = True
        self._write_parts(parts)
        if stream.local_closed:
            self._maybe_forget(stream)

    def _write_parts(self, parts: list[bytes | memoryview]) -> None:
        if not parts:
            return
        self._out.extend(parts)
        for p in parts:
            self._out_size += len(p)
        if not self._in_read:
            self._schedule_flush()

    def _send_pending(self, stream: Stream, parts: list[bytes | memoryview]) -> None:
        """Move as much of `stream.out` as the windows allow into `parts`."""
        out = stream.out
        if out is None or self._write_paused:
            return
        room = min(stream.send_window, self.conn_send_window)
        if room <= 0:
            return
        chunk = out[:room]
        rest = out[len(chunk):]
        last = not len(rest)
        stream.send_window -= len(chunk)
        self.conn_send_window -= len(chunk)
        parts += f.data_frames(stream.id, chunk, last and stream.out_end, self.peer_max_frame)
        if last:
            stream.out = None
            self._blocked.pop(stream.id, None)
            if stream.out_trailers is not None:
                parts.append(stream.out_trailers)
                stream.out_trailers = None
            stream.local_closed = True
        else:
            stream.out = rest

    def _flush_blocked(self) -> None:
        parts: list[bytes | memoryview] = []
        done: list[Stream] = []
        for stream in list(self._blocked.values()):
            if self.conn_send_window <= 0 or self._write_paused:
                break
            self._send_pending(stream, parts)
            if stream.local_closed:
                done.append(stream)
        self._write_parts(parts)
        for stream in done:
            self._maybe_forget(stream)

    def _maybe_forget(self, stream: Stream) -> None:
        raise NotImplementedError
