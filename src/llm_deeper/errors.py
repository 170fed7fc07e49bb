"""One kind of error a learner can act on.

Anything the user can fix (a bad flag, a missing file, a config that cannot work) raises
`UserError` with one sentence that names the problem and the fix. The CLI prints that sentence
and exits with code 2; it never shows a traceback for these.
"""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""

    exit_code = 2
