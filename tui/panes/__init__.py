"""The panes of the main screen, one per tab; a pane that changes the daemon owns those actions."""
