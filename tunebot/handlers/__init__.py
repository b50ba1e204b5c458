"""Command handlers, one module per command family; tunebot.dispatch holds their table."""
