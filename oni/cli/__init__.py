"""``oniwm`` subcommands that belong to the message layer. Each module defines ``register(subparsers)``."""
