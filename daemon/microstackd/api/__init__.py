"""The API: gRPC servicers, thin adapters from requests to the domain, and
the one table that says who may call each method on each channel (which is
also what gets registered). Servicers are built with the domain objects they
need, never the daemon's wiring object."""
