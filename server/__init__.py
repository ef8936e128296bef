"""The fedhar Flower ServerApp (``server.app:app``)."""
