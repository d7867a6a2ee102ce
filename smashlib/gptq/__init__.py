"""GPTQ in plain torch: the solver (:mod:`.solver`) and the block-by-block calibration (:mod:`.layerwise`)."""
