"""Backend stage 4: the web: the Quart app, access checks, WebSocket hub, fleet view, JSON
shapes and Prometheus text."""
