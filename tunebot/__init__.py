"""tunebot: prompt engineering vs fine-tuning, measured inside Slack."""
