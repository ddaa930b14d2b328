"""CLI sub-commands, one module each (see dynet_deploy.cli)."""
