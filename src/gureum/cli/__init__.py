"""The `gureum` command: `main.py` defines it; the only place that reads argv/env into Settings."""
