"""Authentication: JWT verification and API keys, as pure logic the AuthMiddleware calls."""
