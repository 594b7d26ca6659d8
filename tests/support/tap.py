"""A TCP tap for tests: listens on a loopback port, forwards every connection to an upstream
address, and keeps what clients sent, so a test can read the headers a gateway sent to a
replica (HTTP/1.1 as text, HTTP/2 header blocks decoded with hpack).

Threads, not a process: it only copies bytes. `close()` stops accepting and closes every
connection it opened.
"""

from __future__ import annotations

import socket
import threading

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Tap:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sent: list[bytearray] = []  # one per connection: what the client sent
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="tap-accept").start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            up.settimeout(None)
            buf = bytearray()
            with self._lock:
                self.sent.append(buf)
                self._socks += [client, up]
            threading.Thread(target=self._pipe, args=(client, up, buf), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if keep is not None:
                    with self._lock:
                        keep += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def http1_text(self) -> str:
        with self._lock:
            return "".join(bytes(b).decode("latin-1") for b in self.sent)

    def h2_header_blocks(self) -> list[dict[str, str]]:
        """Every request header block clients sent over HTTP/2 (HEADERS + CONTINUATION)."""
        with self._lock:
            conns = [bytes(b) for b in self.sent]
        out: list[dict[str, str]] = []
        for data in conns:
            if not data.startswith(PREFACE):
                continue
            dec = hpack.Decoder()
            dec.max_allowed_table_size = 1 << 20
            pos, block = len(PREFACE), b""
            while pos + 9 <= len(data):
                length = int.from_bytes(data[pos:pos + 3], "big")
                ftype, flags = data[pos + 3], data[pos + 4]
                payload = data[pos + 9:pos + 9 + length]
                pos += 9 + length
                if len(payload) < length:
                    break
                if ftype == 0x1:  # HEADERS: strip padding and priority
                    pad = 0
                    if flags & 0x8:
                        pad, payload = payload[0], payload[1:]
                    if flags & 0x20:
                        payload = payload[5:]
                    block = payload[:len(payload) - pad] if pad else payload
                elif ftype == 0x9:  # CONTINUATION
                    block += payload
                else:
                    continue
                if flags & 0x4:  # END_HEADERS
                    out.append({str(k if isinstance(k, str) else k.decode()):
                                str(v if isinstance(v, str) else v.decode("latin-1"))
                                for k, v in dec.decode(block)})
        return out

    def close(self) -> None:
        self._closed = True
        self._server.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

