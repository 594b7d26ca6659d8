"""How calls arrive and leave: the TF Serving REST and gRPC surfaces and the upstream clients.

- `ingress`: the one ingress layer both engines share (answering errors, the x-infergate
  headers, observation, counting calls for the drain);
- `rest_call`: a REST request -> `Call`; `grpc_methods`: the gRPC method table;
- `native_rest/`, `native_grpc/`: the default engine (asyncio protocols, own HTTP/1.1 and h2c);
- `compat/`: aiohttp and grpcio, for TLS to replicas and as a reference engine.

What must always hold: transports never import app; native never imports compat.
"""
