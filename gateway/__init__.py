"""infergate: a drop-in gRPC/REST gateway for TensorFlow Serving fleets.

This package is the gateway process. It never imports TensorFlow: it forwards raw request bytes
and decodes only the parts it routes on (the ModelSpec of a gRPC request, the path of a REST one).
"""

__version__ = "0.1.0"
