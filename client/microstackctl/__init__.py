"""microstackctl: the command line of microstackd."""
