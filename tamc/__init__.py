"""The entry point: the ``tamc`` command, settings and wiring. It only wires; the work is in the
other packages."""
