"""DNS forwarding: the wire fast path, the answer cache, the listener and the upstream forwarder."""
