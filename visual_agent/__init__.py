"""visual_agent."""
