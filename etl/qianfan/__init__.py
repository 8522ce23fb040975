"""The Qianfan console v2 fine-tuning API: signing, client and pagination."""

from etl.qianfan import signing
from etl.qianfan.client import QianfanClient, RetryPolicy
from etl.qianfan.pagination import MarkerPaginator, fetch_pages

__all__ = [
    "MarkerPaginator",
    "QianfanClient",
    "RetryPolicy",
    "fetch_pages",
    "signing",
]
