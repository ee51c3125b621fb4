"""The orders service (a made-up app for lanyard's scanner tests)."""

# Planted: the app's own secret. A `pip install .` records this file in RECORD, but the
# install has a direct_url.json (PEP 610), so the file is the user's code and still counts.
DATABASE_URL = "postgresql://orders:VjTZUfCjXkJjkJ80ceullf@db.internal:5432/orders"


def handler():
    return "ok"
