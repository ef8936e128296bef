"""The one console fedhar prints its progress and messages to (rich, on stderr: stdout stays for results).

The CLI, the federated round loop and the deploy runtime all write through it, so tests and logs see one stream."""

from rich.console import Console

console = Console(stderr=True)
