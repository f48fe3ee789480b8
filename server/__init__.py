"""HTTP API, live streams, cockpit and operator console. Filled by the server issue."""
