"""Compressed REST bodies: TF Serving accepts Content-Encoding: gzip, and the gateway must pass
the body through untouched (DESIGN.md, "a proxy first"); a body that does not decode is the
replica's 400, never a 500 of the gateway's own. Found by tests/fuzz/test_fuzz_rest.py: the
compat listener used to decode bodies itself (aiohttp's auto_decompress), forwarding decoded bytes
under the original Content-Encoding and answering 500 for a body that did not decode.
"""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from tests.fuzz.conftest import raw_request
from tests.integration.gwproc import GatewayProc
from tests.support.procs import ReplicaProc

pytestmark = pytest.mark.integration

PATH = b"/v1/models/half_plus_two:predict"
BODY = b'{"instances": [1.0, 2.0, 5.0]}'

def test_control_plain_body(gateway: GatewayProc, replica: ReplicaProc) -> None:
    via = raw_request(gateway.rest_port, "POST", PATH, [], BODY)
    assert via.status == 200
    assert json.loads(via.body) == {"predictions": [3.5, 4.0, 5.5]}


def test_gzip_body_is_forwarded_untouched(gateway: GatewayProc, replica: ReplicaProc) -> None:
    hdrs = [("Content-Encoding", "gzip")]
    body = gzip.compress(BODY, mtime=0)
    direct = raw_request(replica.rest_port, "POST", PATH, hdrs, body)
    via = raw_request(gateway.rest_port, "POST", PATH, hdrs, body)
    assert direct.status == 200
    assert (via.status, json.loads(via.body)) == (200, json.loads(direct.body))


@pytest.mark.parametrize("encoding, body", [
    ("gzip", BODY),
    ("deflate", b"xx"),
    ("gzip", gzip.compress(BODY, mtime=0)[:-9]),
    ("deflate", zlib.compress(BODY)[2:12]),
    ("br", b"\x00\x01"),
], ids=["gzip-but-plain", "deflate-junk", "gzip-truncated", "deflate-cut", "br-junk"])
def test_undecodable_body_gets_the_replica_answer(gateway: GatewayProc, replica: ReplicaProc,
                                                  encoding: str, body: bytes) -> None:
    hdrs = [("Content-Encoding", encoding)]
    direct = raw_request(replica.rest_port, "POST", PATH, hdrs, body)
    via = raw_request(gateway.rest_port, "POST", PATH, hdrs, body)
    assert via.status < 500, via
    assert (via.status, via.body) == (direct.status, direct.body)
