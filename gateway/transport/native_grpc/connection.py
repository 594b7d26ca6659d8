"""The HTTP/2 connection machinery both ends share (RFC 9113): frame dispatch, SETTINGS, PING,
GOAWAY, RST_STREAM, WINDOW_UPDATE, header blocks across CONTINUATION, flow control in both
directions, and the abuse limits. `server.H2ServerConnection` and `client.H2ClientConnection`
add what differs: who opens streams and what a complete stream means.

What must always hold:
- every header block is HPACK-decoded in order, even for a stream that is already gone, so the
  decoder's table never falls out of step with the peer's encoder;
- received DATA counts against both receive windows and is credited back as soon as it is
  buffered (the layer above bounds a stream's buffer by the message size limit); the peer
  exceeding a window is FLOW_CONTROL_ERROR;
- sent DATA never exceeds min(stream window, connection window); what does not fit waits in the
  stream and leaves on WINDOW_UPDATE, on SETTINGS raising the initial window, or when the
  transport drains;
- a connection error sends GOAWAY with the error code and closes; a stream error resets only
  that stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from gateway.transport.native_grpc import frames as f
from gateway.transport.native_grpc.frames import ProtocolError, StreamError
from gateway.transport.native_grpc.hpack import (
    HeaderListTooLarge,
    Headers,
    HpackDecoder,
    HpackEncoder,
    HpackError,
)
from gateway.transport.native_grpc.sending import H2Output
from gateway.transport.native_grpc.stream import H2Limits, Stream

log = logging.getLogger("infergate.http2")

_RECENT_RESETS = 256  # closed stream ids remembered, so their late frames are ignored quietly
_LINGER_S = 1.0  # how long a failed connection keeps reading before it closes


class H2Connection(H2Output, asyncio.Protocol):
    """Shared state and frame handling; subclasses implement the `_on_*` hooks."""

    is_client = False

    def __init__(self, limits: H2Limits, encoder: HpackEncoder) -> None:
        super().__init__()
        self.limits = limits
        self.encoder = encoder
        self.reader = f.FrameReader(limits.max_frame_size)
        self.decoder = HpackDecoder(max_list_size=limits.max_header_list_size)
        self.closed = False
        self.goaway_sent = False
        self.goaway_received: int | None = None  # the peer's last_stream_id
        self.highest_peer_stream = 0
        # peer settings
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_streams: int | None = None
        self.recv_conn_window = f.DEFAULT_WINDOW  # raised to limits.connection_window at start
        self.recv_conn_unacked = 0
        # a header block in progress
        self._hdr_stream = 0
        self._hdr_parts: list[bytes] = []
        self._hdr_end_stream = False
        self._hdr_frames = 0
        self._hdr_size = 0
        self._recent_resets: dict[int, None] = {}
        # abuse counters (fixed one-second windows)
        self._rate_start = 0.0
        self._ctl_count = 0
        self._rst_count = 0
        self._refused_count = 0

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self._rate_start = self.loop.time()
        lim = self.limits
        settings = {f.MAX_CONCURRENT_STREAMS: lim.max_concurrent_streams,
                    f.INITIAL_WINDOW_SIZE: lim.initial_window,
                    f.MAX_FRAME_SIZE: lim.max_frame_size,
                    f.MAX_HEADER_LIST_SIZE: lim.max_header_list_size,
                    f.ENABLE_PUSH: 0}
        if not self.is_client:
            del settings[f.ENABLE_PUSH]  # only a client may send it
        out = (f.PREFACE if self.is_client else b"") + f.settings(settings)
        if lim.connection_window > f.DEFAULT_WINDOW:
            out += f.window_update(0, lim.connection_window - f.DEFAULT_WINDOW)
            self.recv_conn_window = lim.connection_window
        self.transport.write(out)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._in_read = True
        try:
            self._receive(data)
        except ProtocolError as exc:
            self.fail(exc.code, str(exc))
        except HeaderListTooLarge as exc:
            self.fail(f.ENHANCE_YOUR_CALM, str(exc))
        except HpackError as exc:
            self.fail(f.COMPRESSION_ERROR, f"header block: {exc}")
        finally:
            self._in_read = False
            self._flush()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._blocked:
            self._flush_blocked()
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._blocked.clear()

    # ---- reading ------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        for ftype, flags, sid, payload in self.reader.feed(data):
            if self._hdr_stream and ftype != f.CONTINUATION:
                raise ProtocolError(f.PROTOCOL_ERROR, "header block interrupted")
            try:
                if ftype == f.DATA:
                    self._data_frame(flags, sid, payload)
                elif ftype == f.HEADERS:
                    self._headers_frame(flags, sid, payload)
                elif ftype == f.CONTINUATION:
                    self._continuation_frame(flags, sid, payload)
                elif ftype == f.WINDOW_UPDATE:
                    self._window_update_frame(sid, payload)
                elif ftype == f.RST_STREAM:
                    self._rst_frame(sid, payload)
                elif ftype == f.SETTINGS:
                    self._settings_frame(flags, sid, payload)
                elif ftype == f.PING:
                    self._ping_frame(flags, sid, payload)
                elif ftype == f.GOAWAY:
                    if sid:
                        raise ProtocolError(f.PROTOCOL_ERROR, "GOAWAY on a stream")
                    last, code, debug = f.parse_goaway(payload)
                    self._on_goaway(last, code, debug)
                elif ftype == f.PRIORITY:
                    if sid == 0 or len(payload) != 5:
                        raise ProtocolError(f.PROTOCOL_ERROR, "malformed PRIORITY")
                    self._count_control()
                elif ftype == f.PUSH_PROMISE:
                    raise ProtocolError(f.PROTOCOL_ERROR, "PUSH_PROMISE is not allowed")
                # frames of unknown types are ignored (RFC 9113 section 5.5)
            except StreamError as exc:
                self.reset_stream(exc.stream_id, exc.code)
            if self.closed:
                return

    def _data_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ProtocolError(f.PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)
        self.recv_conn_window -= n
        if self.recv_conn_window < 0:
            raise ProtocolError(f.FLOW_CONTROL_ERROR, "connection receive window exceeded")
        self.recv_conn_unacked += n
        if self.recv_conn_unacked >= self.limits.connection_window // 2:
            self._write(f.window_update(0, self.recv_conn_unacked))
            self.recv_conn_window += self.recv_conn_unacked
            self.recv_conn_unacked = 0
        stream = self.streams.get(sid)
        end = bool(flags & f.END_STREAM)
        if stream is None:
            self._unknown_stream_frame(sid, "DATA")
            return
        if stream.remote_closed:
            raise StreamError(sid, f.STREAM_CLOSED, "DATA after END_STREAM")
        data = f.strip_padding(flags, payload) if flags & f.PADDED else payload
        if not data and not end:
            self._count_control()  # empty DATA frames cost us and carry nothing
        stream.recv_unacked += n
        if stream.recv_unacked > self.limits.initial_window:
            raise StreamError(sid, f.FLOW_CONTROL_ERROR, "stream receive window exceeded")
        if end:
            stream.remote_closed = True
        elif stream.recv_unacked >= self.limits.initial_window // 2:
            self._write(f.window_update(sid, stream.recv_unacked))
            stream.recv_unacked = 0
        self._on_data(stream, data, end)

    def _unknown_stream_frame(self, sid: int, what: str) -> None:
        if sid in self._recent_resets:
            return  # a stream we reset: the peer had not seen it yet
        if self._is_idle(sid):
            raise ProtocolError(f.PROTOCOL_ERROR, f"{what} on idle stream {sid}")
        # closed a while ago: tell the peer, once per frame, cheaply
        self._write(f.rst_stream(sid, f.STREAM_CLOSED))

    def _is_idle(self, sid: int) -> bool:
        """A stream id the peer could not have used yet."""
        raise NotImplementedError

    def _headers_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ProtocolError(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        fragment = f.headers_fragment(flags, payload)
        end_stream = bool(flags & f.END_STREAM)
        if flags & f.END_HEADERS:
            self._header_block(sid, fragment, end_stream)
            return
        self._hdr_stream = sid
        self._hdr_parts = [fragment]
        self._hdr_end_stream = end_stream
        self._hdr_frames = 1
        self._hdr_size = len(fragment)

    def _continuation_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if not self._hdr_stream or sid != self._hdr_stream:
            raise ProtocolError(f.PROTOCOL_ERROR, "CONTINUATION without a header block")
        self._hdr_frames += 1
        self._hdr_size += len(payload)
        lim = self.limits
        if (self._hdr_frames > lim.max_header_frames
                or self._hdr_size > lim.max_header_list_size + lim.max_frame_size):
            raise ProtocolError(f.ENHANCE_YOUR_CALM, "header block too long (CONTINUATION flood)")
        self._hdr_parts.append(payload)
        if flags & f.END_HEADERS:
            block = b"".join(self._hdr_parts)
            self._hdr_stream = 0
            self._hdr_parts = []
            self._header_block(sid, block, self._hdr_end_stream)

    def _header_block(self, sid: int, block: bytes, end_stream: bool) -> None:
        headers = self.decoder.decode(block)  # always, to keep the table in step
        self._on_headers(sid, headers, end_stream)

    def _window_update_frame(self, sid: int, payload: bytes) -> None:
        inc = f.parse_u32(payload, "WINDOW_UPDATE") & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                raise ProtocolError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.conn_send_window += inc
            if self.conn_send_window > f.MAX_WINDOW:
                raise ProtocolError(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            stream = self.streams.get(sid)
            if stream is None:
                if self._is_idle(sid):
                    raise ProtocolError(f.PROTOCOL_ERROR, "WINDOW_UPDATE on idle stream")
                return
            if inc == 0:
                raise StreamError(sid, f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            stream.send_window += inc
            if stream.send_window > f.MAX_WINDOW:
                raise StreamError(sid, f.FLOW_CONTROL_ERROR, "stream window above 2^31-1")
        if self._blocked:
            self._flush_blocked()

    def _rst_frame(self, sid: int, payload: bytes) -> None:
        code = f.parse_u32(payload, "RST_STREAM")
        if sid == 0:
            raise ProtocolError(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        stream = self.streams.pop(sid, None)
        if stream is None:
            if self._is_idle(sid):
                raise ProtocolError(f.PROTOCOL_ERROR, "RST_STREAM on idle stream")
            return
        self._blocked.pop(sid, None)
        stream.reset_code = code
        if not self.is_client:
            self._count_rate("_rst_count", self.limits.max_resets_per_s, "rapid reset")
        self._on_reset(stream, code)

    def _settings_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise ProtocolError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise ProtocolError(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        self._count_control()
        for key, value in f.parse_settings(payload):
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise ProtocolError(f.FLOW_CONTROL_ERROR, "initial window above 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for s in self.streams.values():
                    s.send_window += delta
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                    raise ProtocolError(f.PROTOCOL_ERROR, f"invalid MAX_FRAME_SIZE {value}")
                self.peer_max_frame = value
            elif key == f.MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == f.ENABLE_PUSH:
                if value > 1 or (self.is_client and value):
                    raise ProtocolError(f.PROTOCOL_ERROR, f"invalid ENABLE_PUSH {value}")
            # HEADER_TABLE_SIZE: our encoder never indexes, so any size suits it.
        self._write(f.SETTINGS_ACK)
        if self._blocked:
            self._flush_blocked()

    def _ping_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise ProtocolError(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ProtocolError(f.FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
        if flags & f.ACK:
            self._on_ping_ack(payload)
            return
        self._count_control()
        self._write(f.ping(payload, ack=True))

    # ---- limits -------------------------------------------------------------------------

    def _count_control(self) -> None:
        self._count_rate("_ctl_count", self.limits.max_control_per_s, "control frame flood")
        t = self.transport
        if t is not None and t.get_write_buffer_size() > self.limits.max_write_buffer:
            raise ProtocolError(f.ENHANCE_YOUR_CALM, "peer does not read what it asks for")

    def _count_rate(self, counter: str, limit: int, what: str) -> None:
        now = self.loop.time()
        if now - self._rate_start >= 1.0:
            self._rate_start = now
            self._ctl_count = self._rst_count = self._refused_count = 0
        n = getattr(self, counter) + 1
        setattr(self, counter, n)
        if n > limit:
            raise ProtocolError(f.ENHANCE_YOUR_CALM, f"{what}: more than {limit} per second")

    def _maybe_forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self.streams.pop(stream.id, None)
            self._on_closed(stream)

    def reset_stream(self, sid: int, code: int) -> None:
        stream = self.streams.pop(sid, None)
        self._blocked.pop(sid, None)
        self._recent_resets[sid] = None
        if len(self._recent_resets) > _RECENT_RESETS:
            del self._recent_resets[next(iter(self._recent_resets))]
        self._write(f.rst_stream(sid, code))
        if stream is not None:
            stream.reset_code = code
            self._on_reset(stream, code, local=True)

    def fail(self, code: int, message: str) -> None:
        """A connection error: GOAWAY with `code`, then close. The close lingers (our side
        shut, the peer's bytes read and dropped) so that a peer still sending does not turn
        our GOAWAY into a connection reset before it has read it."""
        if self.closed:
            return
        log.log(logging.DEBUG if code == f.NO_ERROR else logging.INFO,
                "HTTP/2 connection closed with code %d: %s", code, message)
        self._write(f.goaway(self.highest_peer_stream, code, message[:200].encode()))
        self._flush()
        self.goaway_sent = True
        self.closed = True
        t = self.transport
        if t is None:
            return
        if t.can_write_eof():
            t.write_eof()
            self.loop.call_later(_LINGER_S, t.close)
        else:
            t.close()

    # ---- hooks --------------------------------------------------------------------------

    def _on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        raise NotImplementedError

    def _on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def _on_reset(self, stream: Stream, code: int, local: bool = False) -> None:
        raise NotImplementedError

    def _on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        raise NotImplementedError

    def _on_ping_ack(self, payload: bytes) -> None:
        return None

    def _on_closed(self, stream: Stream) -> None:
        return None
