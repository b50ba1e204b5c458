"""Development tools shared by the tests and the benchmarks: a local Slack Web API server,
tiny models built from a config, seed data, and the environment of a child process."""
