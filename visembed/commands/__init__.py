"""CLI commands, one small module per area; each has `register(app)`."""
