"""Evaluation: perplexity (more metrics arrive with the HF pipeline)."""

from .perplexity import perplexity

__all__ = ["perplexity"]
