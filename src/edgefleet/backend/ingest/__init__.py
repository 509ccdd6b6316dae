"""Backend stage 1: broker messages -> decoded, de-duplicated, bounded samples and status."""
