"""Relax graph rewrites run before legalization: the NCHWc layout rewrite, and quantized patterns
(QuantizeLinear/DequantizeLinear around convs, matmuls, adds, pools) turned into integer kernels."""
