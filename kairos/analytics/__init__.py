"""LLM request analytics: one row per OpenAI-compatible call, batched into SQLite or PostgreSQL."""
