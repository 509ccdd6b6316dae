"""Backend stage 2: fleet state and history: the SQLite store, its writer, quarantine and the
live per-device state."""
