"""Evaluation: sliding-window perplexity (perplexity.py) and text metrics, ROUGE with Google's
rouge-score and BERTScore on all-MiniLM-L6-v2 (text_metrics.py). The tool-calling task's own
metrics, played as an agent would, are in hf/toolcall_eval.py."""

from .perplexity import perplexity

__all__ = ["perplexity"]
