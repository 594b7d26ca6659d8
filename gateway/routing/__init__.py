"""The request path between ingress and replica: model routers (rule chains, splits, sticky and
balance policies), admission, the exact and similarity cache steps, shadow copies, retries,
hedging and the retry budget (`pipeline` strings them together).

What must always hold: routing sees the rest of the gateway through narrow protocols (what it
reads, what it reports); it never imports transport or app.
"""
