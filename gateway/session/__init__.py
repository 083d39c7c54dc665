"""One client connection's conversation: admission, commands, limits, token expiry."""
