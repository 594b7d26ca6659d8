"""The compat engine: the same REST and gRPC surfaces on aiohttp and grpcio (`listen.engine:
compat`), and the upstream forwarders used when replicas are reached over TLS."""
