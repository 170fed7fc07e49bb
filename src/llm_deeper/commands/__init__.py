"""The sub-commands of `llm-deeper`, one module each (the table is in llm_deeper/cli.py).

Each module has HELP (one line), add_arguments(parser) and run(args) -> int | None; the jobs
behind them (train_run, finetune_run, demo, load_model) are plain functions that lessons and
tests can call too.
"""
