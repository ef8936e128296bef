"""The ``fedhar`` command: one module per subcommand, on top of every other layer (nothing imports it).

Each subcommand parses its flags and calls the library; errors reach the user as one line naming the fix.
"""
