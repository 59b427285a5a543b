"""The modal screens (dialogs) opened over the panes: confirm, choose, import from a URL, help."""
