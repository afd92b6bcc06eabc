"""Discord-free chat: validate, render and submit a message; the reply flow; history; rate limits."""
