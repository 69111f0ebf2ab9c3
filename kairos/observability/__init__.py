"""Metrics (Prometheus exposition); the access log and metrics history join later."""
