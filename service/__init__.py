"""The request path and its entry points (CLI now; the FastAPI app lands with the service issue)."""
