"""The wire contract between agents and the backend: topics, payloads, metric families, who may
publish where. ``base`` is pydantic-free (the lean agent runtime imports only it); ``messages``
holds the pydantic models and ``decode``."""
