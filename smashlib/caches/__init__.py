"""What the cacher group runs on: a hook around ``generate``, the store of prompt-prefix KV caches, and
the measure of how many bytes a KV cache holds (for the benchmarks and tests)."""
