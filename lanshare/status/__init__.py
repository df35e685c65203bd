"""The status listener: HTML page, JSON API and Prometheus metrics (DESIGN §5)."""
