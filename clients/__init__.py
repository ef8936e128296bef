"""The fedhar Flower ClientApp (``clients.app:app``)."""
