"""Downloader middlewares: ``auth`` owns tokens, ``retry`` owns backoff."""

#: Meta key marking the project's own side requests (token calls, Slack posts): the token and
#: retry middlewares leave them alone.
SIDE_REQUEST = "pmp_side_request"
