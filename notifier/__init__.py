"""notifier: accept notifications over HTTP, store them durably, deliver them over SMTP."""

__version__ = "0.1.0"
