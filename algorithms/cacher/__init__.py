"""Algorithms of the cacher group."""
