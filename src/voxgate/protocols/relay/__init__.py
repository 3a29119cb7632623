"""Sans-I/O pieces of the provider relay: credentials, provider table, usage, capture."""
