"""The registry: the system of record for triggers, webhooks, workspaces, API keys and quotas."""
