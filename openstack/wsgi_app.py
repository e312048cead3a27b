"""Tiny WSGI shim for running OpenStack API services under gunicorn.

gunicorn leaves its own command line in sys.argv; oslo.config parses
sys.argv[1:] when a service initialises and dies on gunicorn's options.
This module clears sys.argv, then imports the real application named by
MSOS_WSGI_APP ("module:attribute", attribute defaults to "application").

    MSOS_WSGI_APP=keystone.wsgi.api:application \
        gunicorn --pythonpath openstack wsgi_app:application ...

Each service still finds its configuration through its own environment
variables (OS_KEYSTONE_CONFIG_DIR, OS_GLANCE_CONFIG_DIR,
OS_PLACEMENT_CONFIG_DIR, OS_NOVA_CONFIG_DIR, OS_NEUTRON_CONFIG_DIR and
OS_NEUTRON_CONFIG_FILES).
"""

import importlib
import os
import sys

sys.argv = [os.environ.get("MSOS_WSGI_PROG", sys.argv[0] if sys.argv else "wsgi")]

_module, _, _attr = os.environ["MSOS_WSGI_APP"].partition(":")
application = getattr(importlib.import_module(_module), _attr or "application")
