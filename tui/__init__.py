"""edge-tui: the operator's terminal UI. It talks to the daemon only over its HTTP API."""
