"""Helpers the rest leans on: the cache directory and atomic writes, progress bars, figures."""
