"""Graph -> Graph passes, each a named function run in a visible sequence by its caller."""
