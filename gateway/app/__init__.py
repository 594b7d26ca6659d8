"""The composition root: builds every component from a config, wires the narrow interfaces
between them, swaps configs on reload, drains on SIGTERM, and serves the admin API.

What must always hold: only `gateway.commands` imports this package.
"""
