"""The ingress: the HTTP webhook endpoint for third parties, publishing each accepted request as a fire."""
