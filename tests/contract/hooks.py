"""Schemathesis hooks of the contract check (tests/contract/run.sh loads them).

They shape the inputs, never the checks: every answer is still held to the document and
any 5xx still fails.
"""

from __future__ import annotations

import schemathesis

# The shortest quorum deadline (`?timeout_ms=`) the check sends. The API accepts any
# deadline from 1 ms, and one shorter than a quorum round takes is answered `503
# quorum_unavailable`, as documented; but `not_a_server_error` counts every 5xx, and
# whether a round fits in a few milliseconds depends on the machine's load, not on the
# server. So generated deadlines below this are raised to it: the parameter is still sent
# (its parsing and the server's cap are exercised), and invalid values (0, negative, not
# a number) go through unchanged.
MIN_TIMEOUT_MS = 2000

# The longest long poll (`?wait_ms=` of the change feed, valid up to 30 000 ms) the check
# waits out: on the check's quiet buckets every poll runs to its end, and a few dozen
# polls of up to 30 s would blow the run's time bound. Valid waits above this are
# lowered to it; waits above the API's maximum go through unchanged (and are refused).
MAX_WAIT_MS = 200
API_MAX_WAIT_MS = 30_000


def _as_int(value):
    """The integer a query value stands for, or None (the coverage phase sends query
    values as strings, the fuzzing phase as numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _replace(query, name, new):
    query[name] = str(new) if isinstance(query[name], str) else new


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    query = case.query
    if not isinstance(query, dict):
        return
    t = _as_int(query.get("timeout_ms"))
    if t is not None and 1 <= t < MIN_TIMEOUT_MS:
        _replace(query, "timeout_ms", MIN_TIMEOUT_MS)
    w = _as_int(query.get("wait_ms"))
    if w is not None and MAX_WAIT_MS < w <= API_MAX_WAIT_MS:
        _replace(query, "wait_ms", MAX_WAIT_MS)
