"""User stores: where the proxy finds a user's secrets (authproxy's own file, htpasswd, htdigest; more later)."""
