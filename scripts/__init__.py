"""Maintenance scripts (run from the repository root), e.g. ``python scripts/vendor_static.py``."""
