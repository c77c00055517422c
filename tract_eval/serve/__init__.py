"""``tract-eval serve``: a judge as an HTTP service (``/health``, ``/v1/grade``, OpenRLHF's ``/get_reward``).

The server's stack (FastAPI, uvicorn) is the ``serve`` extra; nothing here imports it until the
command runs (``cli.py``), so the command line works without it.
"""
