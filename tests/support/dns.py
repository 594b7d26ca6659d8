"""A real, small authoritative DNS server for tests, over UDP and TCP on 127.0.0.1, and the
helper that starts and stops it by pid.

Run as ``python -m tests.support.dns --port N --zone FILE``. The zone is a JSON file:

    {"mode": "answer",                        # or "servfail" / "drop", for every name
     "srv_additional": true,                  # put SRV targets' A/AAAA in the additional section
     "names": {
       "svc.test.": {"ttl": 5, "A": ["10.0.0.1"], "AAAA": ["fd00::1"]},
       "_grpc._tcp.svc.test.": {"ttl": 5, "SRV": ["0 1 8500 r1.svc.test."]},
       "down.test.": {"mode": "servfail"}    # per name: "answer", "servfail", "drop"
     }}

Record values are rdata in zone-file text. A name that is not listed gets NXDOMAIN; a listed
name without records of the asked type gets an empty NOERROR answer (NODATA). The file is read
again when it changes (checked on every query: write it with `DnsServer.set_zone`, which
replaces it atomically) and on SIGHUP.

What must always hold: the server answers only from the file as it is now; the helper stops
the process it started, by pid. Nothing here imports the gateway or TensorFlow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import socket
import struct
import sys
from collections.abc import Mapping
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.support.procs import REPO_ROOT, ManagedProcess, ProcessFailed, log_dir

Zone = Mapping[str, Any]


class ZoneFile:
    """The zone as last read; re-read when the file's identity (inode, size, mtime) changes."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.data: dict[str, Any] = {}
        self.names: dict[dns.name.Name, dict[str, Any]] = {}
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        st = self.path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp and not force:
            return
        data = json.loads(self.path.read_text())
        self.data = data
        self.names = {dns.name.from_text(n): spec for n, spec in data.get("names", {}).items()}
        self._stamp = stamp

    def mode(self, qname: dns.name.Name) -> str:
        spec = self.names.get(qname, {})
        return str(spec.get("mode", self.data.get("mode", "answer")))

    def rrset(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
        spec = self.names.get(name, {})
        values = spec.get(dns.rdatatype.to_text(rdtype), [])
        if not values:
            return None
        rdatas = [dns.rdata.from_text(dns.rdataclass.IN, rdtype, v) for v in values]
        return dns.rrset.from_rdata_list(name, int(spec.get("ttl", 30)), rdatas)


def answer(zone: ZoneFile, wire: bytes, udp: bool) -> bytes | None:
    """The response to one query in wire format, or None to stay silent. Over UDP an answer
    larger than the client's buffer (512 bytes without EDNS) is sent empty with TC set."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    zone.refresh()
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if not query.question:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    out = _fill(zone, query, response)
    if out is None:
        return None
    limit = (max(512, query.payload) if query.edns >= 0 else 512) if udp else 65535
    try:
        return out.to_wire(max_size=limit)
    except dns.exception.TooBig:
        short = dns.message.make_response(query)
        short.flags |= dns.flags.AA | dns.flags.TC
        return short.to_wire()


def _fill(zone: ZoneFile, query: dns.message.Message,
          response: dns.message.Message) -> dns.message.Message | None:
    question = query.question[0]
    qname, rdtype = question.name, question.rdtype
    mode = zone.mode(qname)
    if mode == "drop":
        return None
    if mode == "servfail":
        response.set_rcode(dns.rcode.SERVFAIL)
        return response
    if qname not in zone.names:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response
    found = zone.rrset(qname, rdtype)
    if found is not None:
        response.answer.append(found)
        if rdtype == dns.rdatatype.SRV and zone.data.get("srv_additional", True):
            for rdata in found:
                for kind in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    extra = zone.rrset(rdata.target, kind)
                    if extra is not None:
                        response.additional.append(extra)
    return response


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: ZoneFile) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport (CPython 3.11).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = answer(self.zone, data, udp=True)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def _tcp(zone: ZoneFile, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            out = answer(zone, await reader.readexactly(size), udp=False)
            if out is not None:
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client closed the connection
    finally:
        writer.close()


async def serve(port: int, zone_path: pathlib.Path) -> None:
    zone = ZoneFile(zone_path)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: zone.refresh(force=True))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(zone), local_addr=("127.0.0.1", port))
        server = await asyncio.start_server(lambda r, w: _tcp(zone, r, w), "127.0.0.1", port)
    except OSError as exc:
        print(f"Cannot listen on 127.0.0.1:{port}: {exc}", flush=True)
        sys.exit(2)
    print(f"dns server on 127.0.0.1:{port} (udp, tcp), zone {zone_path}", flush=True)
    await stop.wait()
    transport.close()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--zone", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.zone))


# ---------------------------------------------------------------- the helper for tests


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_zone(path: pathlib.Path, zone: Zone) -> None:
    """Replace the zone file atomically (a new inode: the server sees the change at once)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(zone))
    os.replace(tmp, path)


class DnsServer(ManagedProcess):
    """``python -m tests.support.dns`` on a free port of 127.0.0.1."""

    def __init__(self, *, port: int, zone_path: pathlib.Path) -> None:
        argv = [sys.executable, "-m", "tests.support.dns", "--port", str(port), "--zone", str(zone_path)]
        super().__init__(argv, name="dns", cwd=REPO_ROOT, env={"PYTHONUNBUFFERED": "1"})
        self.port = port
        self.zone_path = zone_path

    @property
    def address(self) -> str:
        """"127.0.0.1:PORT", as a `resolver:` setting."""
        return f"127.0.0.1:{self.port}"

    def set_zone(self, zone: Zone) -> None:
        write_zone(self.zone_path, zone)

    def reload(self) -> None:
        """SIGHUP by pid: read the zone file again even if it looks unchanged."""
        os.kill(self.pid, signal.SIGHUP)

    def ask(self, name: str, rdtype: str = "A", timeout: float = 1.0) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", timeout=timeout,
                             port=self.port)


def start_dns(zone: Zone | None = None, timeout: float = 20.0) -> DnsServer:
    """Start a DNS server serving ``zone`` (default: none, every name NXDOMAIN) and wait until it
    answers. A start that loses its port is retried on a new one."""
    last: ProcessFailed | None = None
    for _ in range(3):
        port = free_udp_port()
        zone_path = log_dir() / f"zone-{os.getpid()}-{port}.json"
        write_zone(zone_path, zone or {"names": {}})
        server = DnsServer(port=port, zone_path=zone_path)

        def answers(server: DnsServer = server) -> bool:
            try:
                server.ask("ready.invalid.", timeout=0.2)
            except dns.exception.Timeout:
                return False
            return True

        try:
            server.wait_until(answers, timeout=timeout, what=f"answering DNS on port {port}")
            return server
        except ProcessFailed as exc:
            server.stop()
            last = exc
            if "Cannot listen" not in server.log_text():
                raise
    assert last is not None
    raise last


if __name__ == "__main__":
    main()
