"""Metrics without systemd: ``metrics_bind:`` (TCP and unix), every listener's accept queue,
reuse-port sockets as distinct series through TTIN/TTOU, and `corral status` in step."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading

from obs_util import CorralProcess, Traffic, promtool_check, requests_by_class, samples, scrape, value
from util import free_port, wait_until

BACKLOG = 333


def test_metrics_bind_tcp_and_unix_with_every_accept_queue(tmp_path):
    metrics_port = free_port()
    metrics_unix = str(tmp_path / "metrics.sock")
    with CorralProcess(tmp_path, backlog=BACKLOG,
                       metrics_bind=[f"127.0.0.1:{metrics_port}", f"unix:{metrics_unix}"]) as corral:
        traffic = Traffic(corral.port, ["/"] * 40 + ["/status/404"] * 10, concurrency=4).run()
        assert traffic.failures == [] and traffic.answered == 50
        expected = {"1xx": 0, "2xx": 40, "3xx": 0, "4xx": 10, "5xx": 0}
        # The same registry answers on both metrics sockets.
        for where in (metrics_port, metrics_unix):
            wait_until(lambda: requests_by_class(samples(scrape(where))) == expected, 30, 0.2,
                       f"totals on {where}")
        text = scrape(metrics_unix)
        promtool_check(text)
        data = samples(text)
        queues = {(lb["name"], lb["address"]): v for name, lb, v in data if name == "corral_listen_queue_max"}
        assert queues == {("http", f"127.0.0.1:{corral.port}"): BACKLOG,
                          ("metrics", f"127.0.0.1:{metrics_port}"): BACKLOG,
                          ("metrics", f"unix:{metrics_unix}"): BACKLOG}
        assert value(data, "corral_listen_queue_depth", name="http") == 0
        assert value(data, "corral_supervisor_event_loop_lag_seconds") >= 0
        assert value(data, "process_resident_memory_bytes") > 0

        conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().status == 404
        conn.close()

        status = corral.status()
        assert status["requests_total"] == 50 and status["queue_depth"] == 0
        assert {(item["role"], item["address"]): item["queue_max"] for item in status["listeners"]} == \
            {("http", f"127.0.0.1:{corral.port}"): BACKLOG, ("metrics", f"127.0.0.1:{metrics_port}"): BACKLOG,
             ("metrics", f"unix:{metrics_unix}"): BACKLOG}
        table = corral.status(json_output=False)
        assert status["status"].split(" · ")[:2] == ["2/2 workers ready", "gen 1"]
        assert re.search(r"2/2 workers ready · gen 1 · [\d.k]+ req/s · queue 0 · rss \d+ MiB", table), table
        assert f"listening on unix:{metrics_unix} (metrics, bound, fd " in table
    assert f"127.0.0.1:{metrics_port}/metrics" in corral.log()  # the log says where metrics are served


def test_unix_app_socket_queue_depth_from_sock_diag(tmp_path):
    app_unix = str(tmp_path / "app.sock")
    metrics_port = free_port()
    with CorralProcess(tmp_path, workers=1, backlog=BACKLOG, bind=[f"unix:{app_unix}"],
                       metrics_bind=[f"127.0.0.1:{metrics_port}"]) as corral:
        data = samples(scrape(metrics_port))
        assert value(data, "corral_listen_queue_max", name="http", address=f"unix:{app_unix}") == BACKLOG
        assert value(data, "corral_listen_queue_depth", name="http", address=f"unix:{app_unix}") == 0
        assert "unavailable" not in corral.log()


def test_reuse_port_sockets_are_distinct_series_through_ttin_and_ttou(tmp_path):
    metrics_port = free_port()
    with CorralProcess(tmp_path, workers=2, reuse_port=True, metrics_bind=[f"127.0.0.1:{metrics_port}"]) as corral:

        def http_queues() -> list[dict[str, str]]:
            text = scrape(metrics_port)
            promtool_check(text)
            return [lb for name, lb, _ in samples(text) if name == "corral_listen_queue_max" and
                    lb["name"] != "metrics"]

        assert len(http_queues()) == 2
        corral.signal(signal.SIGTTIN)
        corral.wait_workers(3)
        wait_until(lambda: len(http_queues()) == 3, 30, 0.2, "a third reuse-port socket in the scrape")
        corral.signal(signal.SIGTTOU)
        corral.wait_workers(2)
        wait_until(lambda: len(http_queues()) == 2, 30, 0.2, "the removed socket gone from the scrape")
        assert "accept-queue depth" not in corral.log()  # no closed socket was probed
        listeners = corral.status()["listeners"]
        assert len({(item["address"], item["group"]) for item in listeners if item["role"] == "http"}) == 2
        assert all(item["queue_max"] for item in listeners)


def test_without_systemd_log_lines_are_timestamped_and_access_lines_json(tmp_path):
    secret = "Bearer token-SECRET-77aa"
    with CorralProcess(tmp_path, workers=1, access_log=True, access_log_format="json") as corral:
        sent = Traffic(corral.port, ["/", "/status/404", "/raise"], concurrency=1,
                       headers={"authorization": secret, "cookie": f"sid={secret}"}).run()
        assert sent.responses == {"2xx": 1, "4xx": 1, "5xx": 1}
        wait_until(lambda: corral.log().count('"status": ') >= 3, 30, 0.1, "three access lines")
    lines = corral.log().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert sorted((r["path"], r["status"]) for r in records) == [("/", 200), ("/raise", 500), ("/status/404", 404)]
    stamped = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR|DEBUG|CRITICAL) +corral(-worker)?\[\d+\]: ")
    events = [line for line in lines if "corral[" in line or "corral-worker[" in line]
    assert events and all(stamped.match(line) for line in events), events
    assert any("ERROR" in line and "Exception in ASGI application" in line for line in events)
    assert not [line for line in lines if line.startswith("<")]
    assert "SECRET" not in corral.log()


def test_each_reuse_port_socket_reports_its_own_queue_while_workers_are_stopped(tmp_path):
    metrics_port = free_port()
    with CorralProcess(tmp_path, workers=2, reuse_port=True, timeout=300,
                       metrics_bind=[f"127.0.0.1:{metrics_port}"]) as corral:
        pids = [w["pid"] for w in corral.status()["workers"]]
        clients = 24
        traffic = Traffic(corral.port, ["/"] * clients, concurrency=clients, timeout=120)
        runner = threading.Thread(target=traffic.run)
        try:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            runner.start()
            # The kernel spreads connections over the group's sockets by hash; none is accepted.
            scraped = wait_until(lambda: (q := {lb["name"]: v for name, lb, v in samples(scrape(metrics_port))
                                                if name == "corral_listen_queue_depth" and lb["name"] != "metrics"})
                                 and sum(q.values()) == clients and q, 60, 0.1, f"{clients} queued connections")
            listeners = corral.status()["listeners"]
            reported = {f"http/{item['group']}": item["queue_depth"] for item in listeners if item["role"] == "http"}
            assert reported == scraped
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        runner.join(150)
        assert traffic.failures == [] and traffic.responses["2xx"] == clients
