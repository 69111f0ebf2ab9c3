"""OpenAI-compatible LLM routes: the endpoint, provider calls with fallbacks, limits, analytics."""
