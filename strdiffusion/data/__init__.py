"""Data sets: preparation of train/test crops from photographs or a folder, and their structure maps.

May import core, io, settings and runtime."""
