"""Deploying steps of the update path: the built-in ``ostree admin`` deployer and the reboot policy."""
