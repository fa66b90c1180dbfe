"""The worker process: one fresh interpreter serving the app with corral's engine.

Kept import-light (standard library only at package level): the supervisor
imports ``corral.worker.protocol`` and ``corral.worker.balance`` from here and
must never load uvloop, httptools or the app.
"""
