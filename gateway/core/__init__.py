"""The protocol-neutral kernel every other package stands on.

`call` (Call, Answer, the Forwarder seam), `errors` (typed errors and the one table mapping them
to gRPC codes and HTTP statuses), `wire` (ModelSpec and REST paths read from raw bytes),
`metrics` (every Prometheus series, defined once), `tasks` (named, watched background tasks),
`deadlines`, `memo`.

What must always hold: nothing here imports another gateway package (import-linter checks it).
"""
