"""The edge agent: collectors, durable queue, publisher (extra ``agent``)."""
