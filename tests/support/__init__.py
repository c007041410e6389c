"""Helpers shared by test modules: synthetic data, command lines, workflow runs."""
