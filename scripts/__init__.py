"""Operational scripts run outside the test suite (``python -m scripts.soak``)."""
