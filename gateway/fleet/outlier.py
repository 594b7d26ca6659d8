"""Passive health: replicas that fail calls are taken out of rotation for a while.

Two signals, after Envoy's outlier detection and HAProxy's `observe layer4`:
- `consecutive_errors` failed calls in a row (a 5xx / UNAVAILABLE answer, a dropped connection,
  a per-try timeout) eject a replica for `base_ejection_s` x the number of its ejections, capped
  at `max_ejection_s`; at most `max_ejected_percent` of a pool is ejected this way at once, so a
  fleet-wide problem does not empty the pool;
- a refused connection (nothing listens: the process is gone) marks the replica down at once;
  it comes back through the active health check's normal `rise` count.
A passing active health check lifts an ejection (`uneject_on_probe`, Envoy's
`successful_active_health_check_uneject_host`), so a restarted replica is not kept out for its
full ejection time while the dead one cannot be ejected because of the cap.

What must always hold: this class is the only writer of a replica's ejection state and of the
`infergate_replica_ejected` gauge; each change rebuilds the routing index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.config import Outlier
from gateway.core.metrics import Metrics
from gateway.fleet.replicas import ReplicaSet, ReplicaState

log = logging.getLogger("infergate.outlier")


class OutlierDetector:
    def __init__(self, settings: Callable[[], Outlier], replicas: Callable[[], ReplicaSet],
                 metrics: Metrics) -> None:
        self._settings = settings  # read per event: a reload applies at once
        self._replicas = replicas
        self.metrics = metrics

    def on_success(self, replica: ReplicaState) -> None:
        replica.consecutive_errors = 0

    def on_failure(self, replica: ReplicaState, now: float) -> None:
        """A failed call (the replica answered 5xx / UNAVAILABLE, dropped it, or timed out)."""
        replica.errors += 1
        replica.consecutive_errors += 1
        s = self._settings()
        if replica.consecutive_errors < s.consecutive_errors or now < replica.ejected_until:
            return
        reps = self._replicas()
        pool = [r for r in reps.all if r.pool == replica.pool]
        # Replicas that are down (refused connections, failed probes) do not count against the
        # cap: they are out of rotation already, and the cap must not protect a dead replica.
        ejected = sum(1 for r in pool if now < r.ejected_until and r.healthy)
        if (ejected + 1) * 100 > len(pool) * s.max_ejected_percent:
            return
        replica.ejections += 1
        replica.ejected_until = now + min(s.base_ejection_s * replica.ejections, s.max_ejection_s)
        replica.consecutive_errors = 0
        log.warning("ejecting replica %s for %.0f s after repeated failures", replica.name,
                    replica.ejected_until - now)
        self.metrics.replica_ejected.labels(replica.name).set(1)
        reps.rebuild(now)

    def on_refused(self, replica: ReplicaState, now: float) -> None:
        """The replica refused the connection: nothing listens there. Down at once; the health
        checker brings it back after `rise` good probes."""
        replica.errors += 1
        if not replica.healthy:
            return
        log.warning("replica %s refused a connection: marked down until its health checks pass",
                    replica.name)
        replica.healthy = False
        replica.successes = 0
        self._replicas().rebuild(now)

    def on_probe_passed(self, replica: ReplicaState, now: float) -> None:
        """An active health check passed: lift the ejection (when configured)."""
        if now < replica.ejected_until and self._settings().uneject_on_probe:
            log.info("replica %s passes its health checks: ejection lifted", replica.name)
            replica.ejected_until = 0.0

    def publish(self, reps: ReplicaSet, now: float) -> None:
        """Write the ejection gauge of every replica (once per health round)."""
        for r in reps.all:
            self.metrics.replica_ejected.labels(r.name).set(1 if now < r.ejected_until else 0)
