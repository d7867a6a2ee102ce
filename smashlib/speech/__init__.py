"""Long-form speech recognition pieces used by the ifw batcher: reading audio, cutting it, decoding it in groups."""
