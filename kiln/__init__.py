"""kiln: compile and quantize trained models into fast, verified artifacts."""

from kiln.compiler.artifact import load

__all__ = ["load"]
