"""The replicas: their state, active health checks, load scraping and outlier ejection.

What must always hold: replica state has one writer per fact (health checks write liveness and
versions, the completion hook writes in-flight counts, latency and failures); routing only reads.
This package imports `gateway.core`, `gateway.config` and `policies`, nothing above them.
"""
