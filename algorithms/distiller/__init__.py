"""Algorithms of the distiller group: make a smaller student and train it to match the original."""
