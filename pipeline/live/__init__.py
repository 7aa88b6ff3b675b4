"""Live traffic: the proxy, capture and feedback, and the live canary's analysis."""
