"""Programs that tests run as real subprocesses."""
