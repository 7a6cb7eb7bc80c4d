"""Object storage: the S3 API, its storage engine, and bucket notifications."""
