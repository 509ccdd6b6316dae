"""The backend: ingest, fleet state, alert rules, Slack, dashboard (extra ``backend``)."""
