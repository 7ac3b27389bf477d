"""HTTP routes; they know the store and the settings, nothing of SMTP."""
