"""The AMQP transport: the only code that touches aio-pika, aiormq and pamqp. Any
private attribute of theirs is used here alone, under the version bounds in
pyproject.toml."""

from .connection import quiet_reconnect_noise
from .headers import install_type_preserving_decoder
from .transport import AmqpTransport

# Before any connection decodes a header table: see headers.py for why.
install_type_preserving_decoder()
quiet_reconnect_noise()

__all__ = ["AmqpTransport"]
