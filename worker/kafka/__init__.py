"""Thin adapters over confluent-kafka: client settings, records and error translation."""
