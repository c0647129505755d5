"""Operations: Prometheus metrics (`metrics`, extra `rabbitworker[metrics]`), the
health and readiness endpoints (`health`, `http`), and OpenTelemetry tracing
(`tracing`, extra `rabbitworker[otel]`). Nothing here is imported unless used."""

__all__ = ()
