"""Tiny random-initialised components of the real model classes, for tests and for trying
the real-data path on a laptop (tools/make_tiny_real.py). Imports nothing heavy."""
