"""microstackd: the clustering daemon that joins MicroStack nodes into one cloud."""

__version__ = "0.1.0"
