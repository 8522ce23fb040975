"""qianfan-etl: Baidu Qianfan fine-tuning jobs and tasks into SQL."""

__version__ = "0.1.0"
