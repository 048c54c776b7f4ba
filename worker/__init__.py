"""zsc-worker: a Kafka stream-processing worker for zero-shot text classification."""
