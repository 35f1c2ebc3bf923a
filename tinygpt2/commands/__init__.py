"""Subcommands of `tinygpt2` beyond `generate`, one module each, each with
`register(subparsers, add_model_args)` that adds its parser and sets `handler=`."""
