"""lanshare: a LAN cache for OSTree repositories that keeps every checkpoint chain walkable."""

__version__ = "0.1.0"
