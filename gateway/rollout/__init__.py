"""Canary rollouts: the step controller, its statistics, prediction comparison, the state
store (memory, file or Redis) that lets several gateways agree on a rollout's step, and the
fleet (pooled statistics, one decider under a lease) that makes them one analysis.

What must always hold: this package never imports routing, transport or app; the pipeline feeds
it outcomes through `RolloutManager.observe` and reads weights back.
"""
