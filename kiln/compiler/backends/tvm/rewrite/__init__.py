"""Relax graph rewrites run before legalization: the NCHWc layout rewrite, quantized patterns
(QuantizeLinear/DequantizeLinear around convs, matmuls, adds, pools) turned into integer kernels, and zero-size
constants allocated at run time."""
