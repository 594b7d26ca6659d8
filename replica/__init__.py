"""A TensorFlow-Serving-compatible replica: real SavedModels behind the TF Serving REST and gRPC API.

The real ``tensorflow_model_server`` binary cannot be installed from the package registries this
project reaches, so the replica stands in for it in development, tests and the demo. It must answer
exactly as TF Serving does (paths, services, messages, status codes, error texts, JSON layout), since
the gateway forwards raw bytes to it and clients compare answers byte for byte.

Importing this package is cheap; TensorFlow is imported only by the modules that run models
(``replica.servable``, ``replica.testmodels``) and by ``replica.server`` when it starts.
"""
