"""The SMTP client: sessions and transactions with the relay, what its replies mean, and
the translation of aiosmtplib's failures into notifier's. The only importer of aiosmtplib."""

from notifier.dispatch.smtp.report import Reply, SendReport
from notifier.dispatch.smtp.transport import RelayConfig, SMTPTransport

__all__ = ["RelayConfig", "Reply", "SMTPTransport", "SendReport"]
