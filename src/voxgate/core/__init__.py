"""Long-lived session objects that speak canonical events; no sockets here."""
