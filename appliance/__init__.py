"""Edge Image Appliance: a Glance v2-compatible image service for OpenStack edge sites."""

__version__ = "0.1.0"
