"""What a reload may change on a running gateway.

What must always hold: a setting the live listeners, upstream pools or shared stores were built
with is refused with its reason (the old config keeps serving), never applied halfway; every
other setting applies to both engines from the swap on.
"""

from __future__ import annotations

from gateway.config import GatewayConfig


def check_static(old: GatewayConfig, new: GatewayConfig) -> None:
    """Raise ValueError naming the first setting of `new` that needs a restart."""
    if new.listen != old.listen:
        raise ValueError("listen: addresses cannot change without a restart")
    if new.upstream_tls != old.upstream_tls:
        raise ValueError("upstream_tls: cannot change without a restart")
    if new.limits.max_message_bytes != old.limits.max_message_bytes:
        raise ValueError("limits.max_message_bytes: cannot change without a restart (gRPC "
                         "listeners and upstream channels are sized for it)")
    if (new.tracing, new.payload_log) != (old.tracing, old.payload_log):
        raise ValueError("tracing, payload_log: cannot change without a restart")
    if new.cache.store != old.cache.store:
        raise ValueError("cache.store: cannot change without a restart (rollout state, drains "
                         "and tenant limits live there)")
