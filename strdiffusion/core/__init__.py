"""The model core: the SDE (:mod:`.sde`), the networks (:mod:`.nets`), the samplers (:mod:`.sampling`) and
the training losses (:mod:`.objectives`), with their constants (:mod:`.constants`).

It imports torch, numpy, the standard library and itself only; the pipeline's stages build its
constants from their validated settings (:mod:`strdiffusion.settings`) and do all file I/O.
"""
