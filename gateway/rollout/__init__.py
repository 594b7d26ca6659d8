"""Canary rollouts: the step controller, its statistics, prediction comparison and the state
store (memory, file or Redis) that lets several gateways agree on a rollout's step.

What must always hold: this package never imports routing, transport or app; the pipeline feeds
it outcomes through `RolloutManager.observe` and reads weights back.
"""
