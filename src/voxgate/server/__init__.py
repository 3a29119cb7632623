"""Composition root: settings → app, routes, auth, metrics, usage store."""
