"""Talking to a model: chat templates, the terminal chat, tools and the format of their calls,
the parser of replies (content, reasoning, tool calls), and the agent loop."""
