"""The operator commands of `edge-appliance` that talk to a running daemon (or a Glance v2
endpoint); appliance.cli wires them into its argument parser.

- target: which daemon a command talks to (its Unix socket, or a URL and a token)
- bundle: `bundle export|import|verify|keygen`
- cache: `cache <glance-cache-manage verb>|stats`
"""
