"""One module per `avsa` subcommand; each exposes ``register(subparsers)``."""
