"""Built-in agents that run in-process through the `python` runner."""
