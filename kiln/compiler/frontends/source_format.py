"""The model file formats kiln reads, as detected from content (`frontends.detect_format`)."""

from __future__ import annotations

import enum


class SourceFormat(str, enum.Enum):
    ONNX = "onnx"
    MXNET = "mxnet"
    XGBOOST_JSON = "xgboost-json"
    XGBOOST_UBJSON = "xgboost-ubjson"
    XGBOOST_BINARY = "xgboost-binary"
    LIGHTGBM = "lightgbm"
    SKLEARN_PICKLE = "sklearn-pickle"
    SKOPS = "skops"
