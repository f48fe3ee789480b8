"""System prompts, one template file per role. Filled by the machine-agent issue."""
