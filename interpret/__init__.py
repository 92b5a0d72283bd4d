"""The math and the model adapter: torch and transformers only (no ray, faiss or fastapi)."""
