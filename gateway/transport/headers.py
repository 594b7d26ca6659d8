"""HTTP header sets both REST engines share, defined once (RFC 9110 section 7.6.1).

- `HOP_BY_HOP`: request headers never forwarded to a replica: hop-by-hop, or recomputed by the
  sending side (host, content-length, expect);
- `RELAYED`: answer headers of a replica replayed to the REST client (TF Serving sends only
  these; everything else of an answer is the gateway's: x-infergate-*).
"""

from __future__ import annotations

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "expect", "proxy-connection",
})
RELAYED = ("content-type", "content-encoding")
