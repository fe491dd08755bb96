"""Apache TVM (Relax) backend for neural graphs."""
