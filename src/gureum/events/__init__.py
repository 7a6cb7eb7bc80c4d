"""Asynchronous work: durable event queue, retries, dead letters."""
