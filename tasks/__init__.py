"""Evaluation and applications: loo, lds, recall, audit, influence map and error correction, with their
reports and plots, and one registry (``tasks.registry``) that the CLI, the jobs and the page read.

Stands on ``engine`` (never on the HTTP service); ``tasks.reports`` is light (pydantic only), so the wire
schemas and the clients can import the report models without torch.
"""
