"""The fetch floor: walk every job and task page as sync does, with no transform and no load.

Usage: python -m bench.fetch_floor URL CONCURRENCY  (keys from QIANFAN_ACCESS_KEY/SECRET_KEY)
"""

import json
import os
import sys

from etl import config
from etl.extract import fetch_account
from etl.qianfan import QianfanClient


def fetch_floor(url: str, concurrency: int) -> dict[str, int]:
    """Fetch the whole account, keeping only counts."""
    settings = config.api_settings()
    jobs = tasks = 0
    with QianfanClient(url, settings.access_key, settings.secret_key) as client:
        details = os.environ.get("QIANFAN_ETL_TASK_DETAILS", "true").lower() != "false"
        listings = fetch_account(client, concurrency=concurrency, task_details=details)
        for listing in listings:
            jobs += 1
            tasks += len(listing.tasks)
        return {"api_calls": client.api_calls, "jobs": jobs, "tasks": tasks}


def main(argv: list[str]) -> None:
    """Print the counts as one JSON line."""
    url, concurrency = argv
    print(json.dumps(fetch_floor(url, int(concurrency))))


if __name__ == "__main__":
    main(sys.argv[1:])
