"""HTTP: a thin face over the stages (ingest, admin API, health, metrics)."""
