"""Trials kept for the record: each answered one question, logged in ``docs/experiments/``.
No test imports them and the package may move under them; the log names the commit they ran at."""
