"""What an agent may do, one toolset per concern (telemetry, wallet, bidding, governance, memory,
control); each checks policy itself. Filled by the machine-agent issue."""
