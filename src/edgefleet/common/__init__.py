"""Code shared by the agent and the backend: wire contract, settings, PKI, broker harness."""
