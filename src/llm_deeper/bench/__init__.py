"""Benchmarks behind `llm-deeper bench ...`: ratios measured side by side in one run
(alternating rounds, median), ending with one JSON line (BENCHMARKS.md)."""
