"""vipps-proxy."""
