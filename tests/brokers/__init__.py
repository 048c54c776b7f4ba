"""Brokers the tests start: Apache Kafka from Maven Central (one node, or a KRaft cluster)."""
