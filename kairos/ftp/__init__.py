"""``"protocol": "ftp"`` routes: an HTTP file API over real FTP servers (kairos/ftp/endpoint.py),
with checked paths (paths.py) and pooled, logged-in control connections (pool.py, on aioftp)."""
