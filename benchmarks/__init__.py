"""Throughput, latency and memory benchmarks of rabbitworker against a plain aio-pika
baseline, run against the same RabbitMQ in one run: `python -m benchmarks`."""

__all__: list[str] = []
