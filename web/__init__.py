"""The OpenAI-compatible HTTP layer: a Falcon WSGI app (`web.app.create_app`) served by gunicorn (`web.serve`)."""
