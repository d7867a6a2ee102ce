"""Algorithms of the recoverer group: train back what pruning or quantization lost."""
