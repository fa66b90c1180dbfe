"""WSGI (PEP 3333) on corral's HTTP/1.1 engine.

``WSGIInterface`` is what ``Server(app, settings, interface="wsgi")`` uses.
Modules: ``interface`` (the adapter: execution mode, backpressure, deadlines),
``cycle`` (one request: inline or threaded), ``environ`` (the environ dict),
``head`` (status and header validation), ``body`` (``wsgi.input``),
``filewrapper`` (``wsgi.file_wrapper``), ``sendfile`` (``os.sendfile`` on
the loop), ``pool`` (the thread pool and the deadline watch).
"""

from corral.engine.wsgi.interface import WSGIInterface

__all__ = ["WSGIInterface"]
