"""Jobs behind the CLI commands: plain functions that take a config and return results."""
