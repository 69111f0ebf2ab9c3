"""What the gateway tells its operators: the request metric stores (``requests``) and their
Prometheus exposition (``metrics``, ``multiprocess`` for several workers), the access-log writer
(``accesslog``), the sampled history behind ``/api/metrics/history`` and the streams (``history``),
and OpenTelemetry tracing (``tracing``). The middlewares feed these stores; nothing here imports a
middleware."""
