"""One cog per concern: persona choice, chatting, review, moderation and privacy commands."""
