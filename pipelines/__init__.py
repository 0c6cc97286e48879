"""Multi-stage runs built from the console scripts (``python -m pipelines.<name>``)."""
