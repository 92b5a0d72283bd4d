"""httpx-based Python clients of the REST service: not built yet (the service issue)."""
