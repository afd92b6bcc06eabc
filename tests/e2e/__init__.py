"""End-to-end runs: the real bot process (``python -m bot``) against the Discord API emulator.

``harness`` starts the bot the way an operator does (config file, environment, ``sync-commands``,
then ``python -m bot``) on a tiny model; ``world`` seeds the emulator with users and channels and
drives it like people would; ``answers`` works out, from what the emulator recorded, which answer
the bot gave to each message; ``load`` is the load run behind ``make e2e``.
"""
