"""Rate limiting: compiled policies, the in-memory and Redis stores, and the limiter that joins them."""
