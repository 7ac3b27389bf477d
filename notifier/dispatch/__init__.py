"""Delivery: claiming due work, speaking SMTP, retrying, acknowledging."""
