"""The Discord front end: the bot, its cogs, the review card and the webhook sender.

Only this package imports discord.py; everything it decides is delegated to Discord-free modules.
"""
