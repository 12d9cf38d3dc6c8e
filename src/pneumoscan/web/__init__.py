"""The review web app (FastAPI): pages and a JSON API over the results database, with logins and roles."""
