"""MXNet frontend: reads symbol JSON (symbol.py) and .params (params.py) itself, never importing MXNet,
and converts each op into ONNX nodes through an explicit op table (ops.py) into kiln's Graph (convert.py)."""
