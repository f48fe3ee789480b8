"""The protocol: signed envelopes, topics, the MQTT transport and broker launcher. Filled by the
market issue."""
