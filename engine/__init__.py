"""The request path below HTTP: an engine (model backend, indexes, cache) answering one query.

``pipeline`` answers a query (prepare, s_test, search, score, rank), ``backends`` runs the model compute
in this process or on the Ray pool, ``builds`` writes the kNN and gradient indexes, ``cache`` keeps
finished ``s_test`` runs. The CLI, the HTTP service and the evaluation tasks all stand on it.
"""
