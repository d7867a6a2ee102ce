"""generate's decoding step compiled ahead of time by AOTInductor: one C++ call per token, no Python per op.

What it is for. At batch 1 a decode step reads every weight once; smashlib's 8-bit kernel reads them at the
memory bandwidth, so what is left is the framework around it: with ``torch.compile`` a Python ``generate``
loop calls a guarded compiled graph whose Python wrapper calls the step's hundreds of kernels one by one
(docs/cpu_recipe.md, "Decode against llama.cpp"). AOTInductor (``torch._inductor.aoti_compile_and_package``)
compiles the exported step into a shared library whose C++ wrapper runs the whole step: no Dynamo guards,
no Python between the kernels. That is what llama.cpp's graph is, and what closes most of the gap to it.

The pieces, one job each:

- :mod:`.cache`: a KV cache of preallocated buffers (:class:`~.cache.PreallocatedCache`). Eager prefill
  writes into the same buffers that the compiled step reads and updates in place, and every call attends
  over the tokens stored so far only (a view of the buffers), not over the whole capacity as a static cache
  does: the compiled step takes the stored length as a symbolic size, so one graph serves every position.
- :mod:`.kernel_views`: smashlib's packed layers keep their kernel's tensors (the int8 matrix, float scales)
  on a kernel object, which ``torch.export`` would copy into the library as unnamed constants. During
  export they are read through the layer as named buffers, so the library is built without weights and
  is handed the model's own tensors when loaded: one copy of the weights in memory, none in the library.
- :mod:`.step`: the exported module (the model and the cache buffers) and the compile.
- :mod:`.runtime`: the compiled step kept in smashlib's cache folder, keyed by what the graph depends on
  (the model's config, the smash recipe, the layers' kernels, the capacity, torch's version and the CPU's
  instruction set), and the two hooks on the model: ``generate`` gets the preallocated cache when it fits
  (batch 1, the prompt and new tokens within the capacity), and ``forward`` sends one-token steps on that
  cache to the compiled library; everything else runs the model's own forward, unchanged.

The library is native code: it is built on this machine and kept in its cache, never saved with the model
and never loaded from a model folder (as for Inductor's cache, whose entries are pickles).
"""
