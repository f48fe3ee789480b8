"""The city: regions, demand, clock, machine lifecycle and metrics. Filled by the market issue."""
