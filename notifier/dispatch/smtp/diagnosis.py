"""What a failed relay probe means, in words an operator can act on: the setting to look
at, not only the library's message. For ``notifier check-config --connect``."""

from __future__ import annotations

import ssl

import aiosmtplib

from notifier.dispatch.smtp.transport import RelayConfig
from notifier.errors import DeliveryError


def diagnose(error: DeliveryError, config: RelayConfig) -> str:
    """``error`` from :meth:`SMTPTransport.probe`, explained against ``config``."""
    cause = error.__cause__
    where = f"{config.host}:{config.port}"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"the relay's TLS certificate is not trusted ({cause.verify_message}): set "
            "NOTIFIER_SMTP_CA_FILE to the PEM bundle of the authority that signed it"
        )
    if isinstance(cause, ssl.SSLError) and config.tls == "tls":
        return (
            f"TLS failed at once on {where} ({cause.reason or cause}): a relay on port 587 "
            "or 25 expects NOTIFIER_SMTP_TLS=starttls; implicit TLS is usually port 465"
        )
    if isinstance(cause, ssl.SSLError):
        return f"the TLS handshake with {where} failed: {cause.reason or cause}"
    if isinstance(cause, aiosmtplib.SMTPAuthenticationError):
        return (
            f"the relay refused the login ({cause.code} {cause.message}): check "
            "NOTIFIER_SMTP_USERNAME and NOTIFIER_SMTP_PASSWORD (or NOTIFIER_SMTP_PASSWORD_FILE)"
        )
    if isinstance(cause, aiosmtplib.SMTPConnectTimeoutError | aiosmtplib.SMTPTimeoutError):
        return (
            f"{where} did not answer within NOTIFIER_SMTP_TIMEOUT ({config.timeout:g} s): "
            "check NOTIFIER_SMTP_HOST, NOTIFIER_SMTP_PORT and the firewall; a relay expecting "
            "implicit TLS (port 465, NOTIFIER_SMTP_TLS=tls) also stays silent at a plain greeting"
        )
    if isinstance(cause, aiosmtplib.SMTPConnectError):
        return (
            f"cannot connect to {where} ({cause}): check NOTIFIER_SMTP_HOST and NOTIFIER_SMTP_PORT"
        )
    text = str(error)
    if "STARTTLS" in text.upper() and "not supported" in text.lower():
        return (
            f"{where} does not offer STARTTLS, which NOTIFIER_SMTP_TLS=starttls requires: "
            "use NOTIFIER_SMTP_TLS=tls if it expects TLS at once (port 465); credentials "
            "are never sent unencrypted"
        )
    return f"the relay at {where} failed the check: {text}"
