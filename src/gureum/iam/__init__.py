"""Identity and access: request signatures (SigV4) and the credentials that make them."""
