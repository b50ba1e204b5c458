"""The Slack surface: Bolt app, listeners, Block Kit, the notifier."""
