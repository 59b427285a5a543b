"""The hub client layer: the one HTTP client for the hub (`[hub] url`), the resumable transfer
of an image's bytes, the translation of the hub's Glance v2 records, and the lookup of hub
records this site has not seen yet. It imports nothing above it (no service, no cache)."""
