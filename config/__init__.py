"""The worker's settings model and example configurations."""
