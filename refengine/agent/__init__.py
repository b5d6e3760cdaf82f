"""The agent runtime: the code sandbox, sessions, the built-in tools and the server-side tool loop."""
