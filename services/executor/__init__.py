"""The executor: turns each fire into exactly one run of the agent and keeps the run history."""
