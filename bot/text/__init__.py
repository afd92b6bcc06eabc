"""What a reply may show: the word filter, defused mentions, splitting, the streaming screen."""
