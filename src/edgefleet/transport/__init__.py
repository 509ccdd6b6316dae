"""How processes talk to the broker: the transport Protocol (``base``), the awscrt MQTT5
adapter (``mqtt``) and the Greengrass IPC transport (``ipc``)."""
