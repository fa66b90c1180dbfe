"""Accept-queue depth of a listening socket: how many connections wait for accept().

A full accept queue is how a stalled or under-sized server fails ("listen queue
full"): the kernel holds connections nobody picks up, then drops SYNs. The kernel
exposes the current length and the limit (the listen backlog) of every listener:

* TCP (v4 and v6): ``getsockopt(IPPROTO_TCP, TCP_INFO)``. On a socket in LISTEN
  state the kernel reuses two fields of ``struct tcp_info`` (``tcp_get_info`` in
  net/ipv4/tcp.c): ``tcpi_unacked`` = ``sk_ack_backlog`` (connections ready for
  accept) and ``tcpi_sacked`` = ``sk_max_ack_backlog`` (the backlog).
* Unix stream sockets: sock_diag over ``NETLINK_SOCK_DIAG``, asking for the one
  socket with our inode and for ``UNIX_DIAG_RQLEN``; on a listener that attribute
  holds the receive-queue length (pending connections) and ``sk_max_ack_backlog``
  (net/unix/diag.c, ``sk_diag_show_rqlen``). Needs ``CONFIG_UNIX_DIAG`` (the
  ``unix_diag`` module, autoloaded on first use where modules can be loaded).

Both are one or two system calls, made per scrape or per STATUS update, never per
request. Nothing here needs privileges.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import itertools
import os
import socket
import struct
from collections.abc import Iterator
from typing import Literal, NamedTuple

__all__ = ["QueueDepth", "accept_queue", "tcp_accept_queue", "unix_accept_queue"]

# struct tcp_info (include/uapi/linux/tcp.h) starts with 8 single bytes
# (state, ca_state, retransmits, probes, backoff, options, wscale bitfield,
# app_limited bitfield), then __u32 rto, ato, snd_mss, rcv_mss, unacked, sacked.
# So tcpi_unacked is at byte offset 24 and tcpi_sacked at 28, native byte order.
_TCP_INFO_HEAD = struct.Struct("=8B6I")
_TCPI_STATE = 0
_TCPI_UNACKED = 8 + 4
_TCPI_SACKED = 8 + 5
_TCP_LISTEN = 10  # enum in include/net/tcp_states.h; the same value for unix sockets

# Netlink / sock_diag constants that Python's socket module does not export.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLMSG_ERROR = 0x2
_NLMSG_DONE = 0x3
_UDIAG_SHOW_RQLEN = 0x10
_UNIX_DIAG_RQLEN = 4
_NOCOOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: "don't check the socket cookie"

_NLMSGHDR = struct.Struct("=IHHII")          # len, type, flags, seq, pid
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, ino, show, cookie[2]
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")   # family, type, state, pad, ino, cookie[2]
_RTATTR = struct.Struct("=HH")               # len, type
_RQLEN = struct.Struct("=II")                # udiag_rqueue, udiag_wqueue

_seq = itertools.count(1)


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """A socket object over someone else's fd, for getsockopt; the fd stays open."""
    # socket.socket(fileno=) is the stdlib's only way to getsockopt a raw fd;
    # detach() hands the fd back instead of closing it.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
    try:
        yield s
    finally:
        s.detach()


class QueueDepth(NamedTuple):
    """Connections waiting in a listener's accept queue, and the queue's limit."""

    depth: int
    max: int


def accept_queue(sock: socket.socket | int) -> QueueDepth | None:
    """Accept-queue depth of a listening TCP or unix stream socket.

    Returns None for sockets that have no accept queue (not listening, datagram,
    another family). Raises OSError when the kernel refuses to tell, e.g. a kernel
    built without CONFIG_UNIX_DIAG; the message says so.
    """
    fd = sock if isinstance(sock, int) else sock.fileno()
    with _borrowed(fd) as s:
        family = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        kind = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if kind != socket.SOCK_STREAM:
        return None
    if family in (socket.AF_INET, socket.AF_INET6):
        return tcp_accept_queue(fd)
    if family == socket.AF_UNIX:
        return unix_accept_queue(fd)
    return None


def tcp_accept_queue(sock: socket.socket | int) -> QueueDepth | None:
    """Queue length and backlog of a listening TCP socket from TCP_INFO; None if not listening."""
    fd = sock if isinstance(sock, int) else sock.fileno()
    with _borrowed(fd) as s:
        raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_HEAD.size)
    if len(raw) < _TCP_INFO_HEAD.size:
        raise OSError(errno.EPROTO, f"TCP_INFO returned {len(raw)} bytes, expected at least "
                                    f"{_TCP_INFO_HEAD.size}; kernel too old for accept-queue metrics")
    info = _TCP_INFO_HEAD.unpack_from(raw)
    if info[_TCPI_STATE] != _TCP_LISTEN:
        return None
    return QueueDepth(depth=info[_TCPI_UNACKED], max=info[_TCPI_SACKED])


def unix_accept_queue(sock: socket.socket | int) -> QueueDepth | None:
    """Queue length and backlog of a listening unix stream socket via sock_diag; None if not listening."""
    fd = sock if isinstance(sock, int) else sock.fileno()
    inode = os.fstat(fd).st_ino
    seq = next(_seq) & 0xFFFFFFFF
    request = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0,
        1 << _TCP_LISTEN,       # udiag_states: only match it if it is listening
        inode, _UDIAG_SHOW_RQLEN, _NOCOOKIE, _NOCOOKIE,
    )
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), _SOCK_DIAG_BY_FAMILY,
                            _NLM_F_REQUEST, seq, 0)
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                           _NETLINK_SOCK_DIAG)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open a NETLINK_SOCK_DIAG socket for unix accept-queue "
                                 f"metrics ({exc.strerror}); is netlink blocked by a seccomp or "
                                 f"RestrictAddressFamilies= filter? allow AF_NETLINK") from exc
    with nl:
        nl.settimeout(2.0)  # the kernel answers at once; this only guards against a wedged netlink
        nl.sendto(header + request, (0, 0))
        while True:
            data = nl.recv(8192)
            result = _parse_unix_diag_reply(data, seq, inode)
            if result is not _Reply.KEEP_READING:
                return result


class _Reply(enum.Enum):
    KEEP_READING = enum.auto()  # this datagram held no answer for our request: read the next


def _parse_unix_diag_reply(data: bytes, seq: int, inode: int) -> QueueDepth | Literal[_Reply.KEEP_READING] | None:
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            raise OSError(errno.EPROTO, "malformed netlink reply from sock_diag")
        body = offset + _NLMSGHDR.size
        end = offset + length
        offset += (length + 3) & ~3
        if msg_seq != seq:
            continue  # a reply to an earlier, timed-out request
        if kind == _NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, body)
            if err == 0:
                continue  # an ACK
            if -err == errno.ENOENT:
                # No listening unix socket with that inode: it is not listening.
                return None
            if -err in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(-err, "the kernel has no unix sock_diag (CONFIG_UNIX_DIAG, module "
                                    "unix_diag): unix accept-queue depth is unavailable; "
                                    "`modprobe unix_diag` enables it")
            raise OSError(-err, f"sock_diag request failed: {os.strerror(-err)}")
        if kind == _NLMSG_DONE:
            return None
        if kind != _SOCK_DIAG_BY_FAMILY:
            continue
        _family, _type, state, _pad, ino, _c0, _c1 = _UNIX_DIAG_MSG.unpack_from(data, body)
        if ino != inode:
            continue
        if state != _TCP_LISTEN:
            return None
        attr = body + _UNIX_DIAG_MSG.size
        while attr + _RTATTR.size <= end:
            alen, atype = _RTATTR.unpack_from(data, attr)
            if alen < _RTATTR.size:
                break
            if atype == _UNIX_DIAG_RQLEN and alen >= _RTATTR.size + _RQLEN.size:
                rqueue, backlog = _RQLEN.unpack_from(data, attr + _RTATTR.size)
                return QueueDepth(depth=rqueue, max=backlog)
            attr += (alen + 3) & ~3
        raise OSError(errno.EPROTO, "sock_diag reply lacks UNIX_DIAG_RQLEN; kernel too old "
                                    "for unix accept-queue metrics (needs Linux >= 3.3)")
    return _Reply.KEEP_READING
