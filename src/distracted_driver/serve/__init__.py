"""Serving stage: ONNX Runtime inference, the model server (SageMaker hosting contract), batch prediction."""
