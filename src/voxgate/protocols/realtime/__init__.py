"""The OpenAI Realtime protocol (GA event names, beta names as aliases), sans-I/O.

- :mod:`.session`: the session object — parsing ``session.update`` (partial, GA nested
  or beta flat fields) into a frozen :class:`~.session.SessionConfig` and rendering it.
- :mod:`.items`: conversation items (messages, function calls and their outputs).
- :mod:`.protocol`: client frames in → typed events (or a :class:`~.errors.ClientEventError`
  naming the field); server events out, renamed for beta clients.
"""
