"""The worker's settings: models by concern (kafka, topics, the root in settings), how they
load (settings.load_settings), their errors, and example configurations."""
