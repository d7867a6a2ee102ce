"""Algorithms of the pruner group."""
