"""Resilience: retry policy, circuit breakers, outlier ejection, active health checks (pure logic)."""
