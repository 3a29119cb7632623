"""Thin asyncio drivers: WebSocket server and upstream client, timers, backpressure."""
