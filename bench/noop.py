"""A job that does nothing: the baseline of RQ's own per-job cost."""


def noop() -> None:
    return None
