"""Files on disk: user-facing errors, atomic writes, image and mask reading, the test pairs file.

May import core."""
