"""How a node applies its role: configuration and the services it runs."""
