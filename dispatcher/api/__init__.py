"""The HTTP API (aiohttp): warnings in JSON and CAP 1.2, reads, audit, health and metrics.
docs/api.md is the manual; /v1/openapi.json the machine-readable description."""
