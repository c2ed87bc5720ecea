"""One trace event per node run: what it received, what it decided, how long it took."""

from __future__ import annotations

import functools
import time
from datetime import datetime, timezone
from typing import Any, Callable


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def traced(node_name: str, *, reads: tuple[str, ...]) -> Callable:
    """Wrap a node so its partial update carries one event under ``events``.

    Args:
        node_name: name in the trace.
        reads: state fields recorded as the node's input.
    """

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def node(state, runtime) -> dict:
            started = time.perf_counter()
            started_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            update = function(state, runtime)
            event = {
                "node": node_name,
                "round": update.get("round", state.round),
                "started_at": started_at,
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
                "input": {field: _jsonable(getattr(state, field)) for field in reads},
                "output": _jsonable({k: v for k, v in update.items() if k != "events"}),
            }
            runtime.context.on_progress("node", {"node": node_name, "elapsed_ms": event["elapsed_ms"]})
            return {**update, "events": [event]}

        return node

    return decorate
