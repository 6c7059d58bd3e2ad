"""The one family of errors subledger raises on purpose.

Each names the problem in its message, in one line a person can act on: the
command line prints it as `subledger: <message>` and exits non-zero, never
with a traceback. Each also keeps the standard base it had (ValueError,
LookupError, RuntimeError), so code catching those still catches it.
"""

from __future__ import annotations


class SubledgerError(Exception):
    """An error subledger raises on purpose; its message says what is wrong."""
