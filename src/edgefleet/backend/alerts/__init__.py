"""Backend stage 3: alerts: the rules file, the pure engine and its state, the alert centre."""
