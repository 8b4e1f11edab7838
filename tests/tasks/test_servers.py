"""`port_free`: a port in use is "not free"; an address this machine does not have is an error that says so."""
import socket

import pytest

from tasks.servers import port_free


def test_a_busy_port_is_not_free_and_a_foreign_host_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_free("127.0.0.1", port) is False
    assert port_free("127.0.0.1", port) is True
    with pytest.raises(RuntimeError, match=r"cannot bind 192\.0\.2\.1:4200: .*is --host an address of this machine"):
        port_free("192.0.2.1", 4200)  # TEST-NET-1: never a local address
