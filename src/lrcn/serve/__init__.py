"""Serving predictions: attention maps (and a web demo)."""
