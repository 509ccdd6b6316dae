"""Development tooling: a certificate authority (``pki``), a Mosquitto broker standing in for
AWS IoT Core (``broker``) and ``edgefleet demo`` (``demo``). Never used in production."""
