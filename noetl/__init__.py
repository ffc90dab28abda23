"""noetl-runtime: a workflow runtime for NoETL playbooks on NATS JetStream and PostgreSQL."""

__version__ = "0.1.0"
