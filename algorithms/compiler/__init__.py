"""Algorithms of the compiler group."""
