"""What the proxy tells its operator: the access log (and, later, metrics)."""
