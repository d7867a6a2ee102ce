"""What the batcher group runs on: collecting callers' requests into padded batches and handing each its result.

``batch_queue`` collects work from many threads, ``requests`` checks and normalises one caller's input,
``padding`` pads rows into a batch and cuts the batch's output back into rows, ``dynamic_batcher`` ties
them to a model's ``generate`` and forward pass, and ``attach`` is how a SmashedModel finds the batcher.
"""
