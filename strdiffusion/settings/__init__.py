"""Typed settings: each stage's options (one name, type, default, help and config key each), the config
file and its schema, the lists of methods, networks and metrics, and the text form of structured values.

May import core and io. Imports no torch: the workflow reads it when it parses the rules."""
