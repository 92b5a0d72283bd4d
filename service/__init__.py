"""The HTTP service: routes, the core, limits, jobs, middleware, settings and the wire schemas."""
