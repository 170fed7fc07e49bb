"""Progress bars (tqdm) that show on a terminal and stay quiet in a log file.

A bar redraws itself with carriage returns; written to a file or a pipe that becomes thousands
of lines, so bars are off unless the output is a terminal (tqdm's `disable=None`).
"""

from __future__ import annotations


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """tqdm(iterable, ...) shown only when enabled and stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **kwargs)
