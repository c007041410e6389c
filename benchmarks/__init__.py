"""Performance benchmarks of strdiffusion (issue #8): ``python -m benchmarks --help``.

Kept free of torch imports so that ``__main__`` can set OpenMP settings before torch loads.
"""
