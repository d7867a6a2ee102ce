"""smashlib's algorithms, one module per algorithm, a folder per group (installed as smashlib.algorithms)."""
