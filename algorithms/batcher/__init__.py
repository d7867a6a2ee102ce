"""Algorithms of the batcher group: they wrap calls to the finished model (applied last, again at load)."""
