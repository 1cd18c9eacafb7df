"""The one error type for a user's mistake.

A bad config value, a missing input, a dataset in the wrong place, a checkpoint that does not
fit its model: each stage's command line prints such an error as one line and exits with
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message says what, and where."""
