"""The gRPC methods of TF Serving the gateway routes, by path, as the `Call.method` names the
pipeline uses. Both engines read this one table."""

from __future__ import annotations

PREDICTION = "/tensorflow.serving.PredictionService/"
MODEL = "/tensorflow.serving.ModelService/"
METHODS: dict[str, str] = {
    PREDICTION + "Predict": "predict",
    PREDICTION + "Classify": "classify",
    PREDICTION + "Regress": "regress",
    PREDICTION + "MultiInference": "multi_inference",
    PREDICTION + "GetModelMetadata": "metadata",
    MODEL + "GetModelStatus": "status",
    MODEL + "HandleReloadConfigRequest": "reload",
}
