"""The Kairos web dashboard: ``uvicorn admin.app:app --port 3000``, or served by the gateway at
``/admin``. It reaches the gateway only through ``kairos.client`` (see admin/app.py)."""
