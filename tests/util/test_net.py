"""free_ports picks distinct ports that are free; port_in_use tells a listener from a free or merely bound port."""

from __future__ import annotations

import socket

from pipeline.util.net import free_port, free_ports, port_in_use

_HOST = "127.0.0.1"


def test_free_ports_are_distinct_and_bindable():
    for _ in range(20):  # one call that closed each probe before the next bind would repeat ports sooner or later
        ports = free_ports(8, _HOST)
        assert len(set(ports)) == len(ports) == 8
        assert all(0 < port < 65536 for port in ports)
    sockets = [socket.socket() for _ in ports]
    try:
        for sock, port in zip(sockets, ports, strict=True):
            sock.bind((_HOST, port))  # free now: every one can be bound, by us, at once
    finally:
        for sock in sockets:
            sock.close()


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind((_HOST, port))


def test_port_in_use_only_for_a_listener():
    with socket.socket() as listener:
        listener.bind((_HOST, 0))
        port = listener.getsockname()[1]
        assert not port_in_use(_HOST, port)  # bound, not listening: connections are refused
        listener.listen()
        assert port_in_use(_HOST, port)
    assert not port_in_use(_HOST, port)
    assert not port_in_use(_HOST, free_port())
