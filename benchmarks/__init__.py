"""Performance benchmarks of strdiffusion: ``python -m benchmarks --help``; one module per section (run.py lists them).

Kept free of torch imports so that ``__main__`` can set OpenMP settings before torch loads.
"""
