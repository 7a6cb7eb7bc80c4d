"""The HTTP front door: management API, AWS Lambda API, auth."""
