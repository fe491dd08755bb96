"""Backends turn a Graph into a library: TVM for neural graphs, tl2cgen for trees."""
