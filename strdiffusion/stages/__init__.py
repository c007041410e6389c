"""The command-line stages: one module per ``strdiffusion <stage>`` (:mod:`strdiffusion.cli`).

Each holds its stage's argparse parser and a thin ``main(argv=None) -> int`` that parses the options
and calls the library functions of the package's modules, which import no argparse. Log lines keep
the library module's logger name.

May import core, io, settings, runtime, data, masks, models, metrics, training, inpainting and reporting.
"""
