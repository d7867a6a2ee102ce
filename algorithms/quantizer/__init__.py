"""Algorithms of the quantizer group."""
