"""StrDiffusion: structure-guided diffusion inpainting (Liu et al., CVPR 2024), reproducible.

The package's subpackages, in layers, lowest first (:data:`LAYERS`). A module may import its own
subpackage and the subpackages of lower layers, never a higher layer nor another subpackage of its own
layer; ``tests/shape/test_layers.py`` checks every import, those inside functions included.

- ``core``: the SDE, the networks, the samplers and the losses (torch and numpy only).
- ``io``: user-facing errors, atomic writes, reading images, masks and the test pairs file.
- ``settings``: each stage's typed settings, the config file and its schema, the lists of methods.
- ``runtime``: GPU slots, stopping on notice, the state lock, numerics, the jobs' environment.
- ``data``, ``masks``, ``models``, ``metrics``: data sets and structure maps; hole masks and test
  pairs; checkpoints; the metrics and their networks.
- ``training``, ``inpainting``: the trainer; the inpainting of test shards and own photos.
- ``reporting``: tables, figures, learning curves, the cost plan, the generated docs.
- ``stages``: the command line of each stage (the only place that knows argparse), under ``cli``.
"""

__version__ = "0.1.0"

LAYERS = (
    ("core",),
    ("io",),
    ("settings",),
    ("runtime",),
    ("data", "masks", "models", "metrics"),
    ("training", "inpainting"),
    ("reporting",),
    ("stages",),
    ("cli",),
    ("__main__",),
)
