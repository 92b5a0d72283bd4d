"""Ray actors and the pool that runs LiSSA repetitions and candidate scoring in parallel (the only ray user).

Not built yet: ``service.pipeline.LocalEngine`` is the single-process reference the pool must reproduce.
"""
