"""`kiln build`: declarative, incremental, reproducible builds from a kiln.toml."""
