"""Calibration: data sets, observers, range collection over ONNX Runtime, and the range cache."""
