"""Algorithms of the batcher group."""
