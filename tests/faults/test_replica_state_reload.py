"""What a reload keeps of a replica's observed state (the rename drill's root cause, in process).

A replica is where it answers: the state of an entry whose addresses stay the same carries over
a reload, whatever its name; an entry at a new address starts unprobed; no old state is shared
by two new entries.
"""

from __future__ import annotations

from gateway.config import Replica
from gateway.fleet.replicas import ReplicaSet


def cfg(name: str, port: int) -> Replica:
    return Replica(name=name, rest=f"127.0.0.1:{port}", grpc=f"127.0.0.1:{port + 1}")


def serving(reps: ReplicaSet) -> ReplicaSet:
    for r in reps.all:
        r.healthy = r.ever_up = True
        r.versions["m"] = {1: "AVAILABLE"}
    reps.rebuild()
    return reps


def test_rename_keeps_health_and_routing() -> None:
    old = serving(ReplicaSet([cfg("r0", 9000), cfg("r1", 9100)]))
    new = ReplicaSet([cfg("zone-a-0", 9000), cfg("zone-b-1", 9100)], previous=old)
    assert [r.name for r in new.available("m", 1)] == ["zone-a-0", "zone-b-1"]
    assert new.all[0] is old.all[0] and new.all[1] is old.all[1]


def test_same_name_new_address_starts_unprobed() -> None:
    old = serving(ReplicaSet([cfg("r0", 9000)]))
    new = ReplicaSet([cfg("r0", 9200)], previous=old)
    assert not new.all[0].healthy and new.available("m", 1) == []


def test_an_old_state_is_claimed_once_and_same_name_wins() -> None:
    old = serving(ReplicaSet([cfg("r0", 9000)]))
    new = ReplicaSet([cfg("alias", 9000), cfg("r0", 9000)], previous=old)
    assert new.by_name["r0"] is old.all[0]
    assert new.by_name["alias"] is not old.all[0] and not new.by_name["alias"].healthy
