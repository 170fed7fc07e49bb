"""The real tools: transformers, PEFT and TRL on real models (SmolLM2-135M-Instruct offline)."""
