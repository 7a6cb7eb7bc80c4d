"""Gureum: a self-hosted serverless platform. The SDK's public API is re-exported here."""

__version__ = "0.1.0"
__all__ = ["__version__"]

# ---- SDK client (owned by the CLI/SDK) ----
from gureum.client import Client, InvokeResult

__all__ += ["Client", "InvokeResult"]
