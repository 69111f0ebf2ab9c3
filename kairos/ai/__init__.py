"""AI routing: providers, strategies, the decision cache, counters (ASGI side: middleware/airouting.py)."""
