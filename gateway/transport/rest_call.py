"""Turn a TF Serving REST request into a `Call`: one place for both REST engines.

What must always hold: a request whose path (with its query) is not a routable model path is
passed through unchanged; a deadline header that is not a finite, non-negative number of
milliseconds is a 400, not a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from gateway.core.call import Call
from gateway.core.errors import BadRequest
from gateway.core.wire import RestRequest, RestTarget, parse_rest_path

TIMEOUT_HEADER = "x-infergate-timeout-ms"


def rest_call(method: str, raw_target: str, headers: Mapping[str, str], body: bytes, t0: float,
              target_of: Callable[[str, str], RestTarget | None] = parse_rest_path) -> Call:
    path, has_query, query = raw_target.partition("?")
    deadline = None
    tmo = headers.get(TIMEOUT_HEADER)
    if tmo is not None:
        try:
            ms = float(tmo)
        except ValueError:
            ms = math.nan
        if not math.isfinite(ms) or ms < 0:
            raise BadRequest(f"Invalid {TIMEOUT_HEADER} header: {tmo[:40]}")
        deadline = t0 + ms / 1000.0
    # TF Serving matches its API paths against the path *with* the query, so no model call
    # carrying a query is routable there; such a request goes through unchanged and the replica
    # gives its own answer.
    target = None if has_query else target_of(method, path)
    if target is None:
        return Call("rest", "other", None, None, None, "", headers, body, deadline,
                    RestRequest(method, raw_target, "", None))
    return Call("rest", target.verb, target.model, target.version, target.label, "", headers,
                body, deadline, RestRequest(method, path, query, target))
