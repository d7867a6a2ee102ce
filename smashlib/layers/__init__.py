"""Compressed layers shared by several algorithms. Each stores plain tensors (safetensors-friendly)
and builds any kernel-specific packing lazily, so saving and loading never touch packed objects."""
