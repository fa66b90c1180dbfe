"""WSGI (PEP 3333) on corral's HTTP/1.1 engine.

Modules: ``environ`` (the environ dict), ``body`` (``wsgi.input``),
``filewrapper`` (``wsgi.file_wrapper`` with ``os.sendfile``), ``pool`` (the
thread pool and the request-deadline watch).
"""
