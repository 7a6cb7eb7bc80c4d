"""The node agent: dispatcher, instance pool, invocation records."""
