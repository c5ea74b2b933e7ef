"""Shared infrastructure for every Kairos service: config, logging, errors, gRPC, database and NATS."""
