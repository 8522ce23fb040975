"""A task's kept summary: what the BI views used to aggregate from its children per query.

The load writes it on the task's row in the same statement batch (and transaction) that
replaces the task's metrics and checkpoints, so it always equals the aggregate of them."""

from operator import itemgetter
from typing import Any

from etl.schema import PIVOTED_METRICS
from etl.transform import TaskRows


def summarised(rows: TaskRows) -> dict[str, Any]:
    """The summary columns of one task, computed from its typed child rows."""
    return checkpoint_summary(rows.checkpoints) | metric_summary(rows.metrics)


def checkpoint_summary(checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """Count, last step, loss at the last step and lowest perplexity (NULLs skipped, as
    SQL's MIN skips them)."""
    if not checkpoints:
        return {
            "checkpoint_count": 0,
            "last_step": None,
            "final_training_loss": None,
            "min_perplexity": None,
        }
    last = max(checkpoints, key=itemgetter("step"))
    perplexities = [row["perplexity"] for row in checkpoints if row["perplexity"] is not None]
    return {
        "checkpoint_count": len(checkpoints),
        "last_step": last["step"],
        "final_training_loss": last["training_loss"],
        "min_perplexity": min(perplexities, default=None),
    }


def metric_summary(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The four pivoted metrics in percent; NULL for a metric the task lacks."""
    by_name = {row["metric_name"]: row["value_percent"] for row in metrics}
    return {column: by_name.get(name) for column, name in PIVOTED_METRICS.items()}
