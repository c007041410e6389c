"""Hole masks: generators, folder and NVIDIA imports, hole-ratio bins, test pairs and the export of
the pairs in other inpainting codes' layouts.

May import core, io, settings and runtime."""
