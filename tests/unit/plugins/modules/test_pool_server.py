"""pool_server's reading of HAProxy 2.6's runtime API answers (captured from the lab's pools)."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.modules.pool_server import (
    admin_state,
    parse_servers_state,
    parse_stat,
    server_names,
)

STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
4 lab-chat 1 lab.chat-0 127.0.0.1 2 0 1 1 101 15 3 3 6 0 0 0 - 8101 - 0 0 - - 0
4 lab-chat 2 lab.chat-1 127.0.0.1 2 8 1 1 101 15 3 3 6 0 0 0 - 8102 - 0 0 - - 0
4 lab-chat 3 lab2.chat-0 127.0.0.1 0 1 1 1 100 8 2 0 6 0 0 0 - 8301 - 0 0 - - 0

"""
STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,status
lab-chat,lab.chat-0,0,0,2,2,2,17,UP
lab-chat,lab.chat-1,0,0,0,1,2,9,DRAIN
lab-chat,BACKEND,3,3,2,4,,26,UP
"""


def test_admin_state_bits():
    # HAProxy server-t.h: 0x01 forced maint, 0x08 forced drain, 0x20 maint by resolution
    assert [admin_state(b) for b in (0, 0x08, 0x01, 0x09, 0x20, 0x10)] == ["ready", "drain", "maint", "maint", "maint", "drain"]


@pytest.mark.parametrize("server,row", [
    ("lab.chat-0", {"bits": 0, "address": "127.0.0.1", "port": 8101}),
    ("lab.chat-1", {"bits": 8, "address": "127.0.0.1", "port": 8102}),
    ("lab2.chat-0", {"bits": 1, "address": "127.0.0.1", "port": 8301}),
    ("ghost", None)])
def test_servers_state(server, row):
    assert parse_servers_state(STATE, "lab-chat", server) == row


def test_servers_of_a_pool_for_the_error_message():
    assert server_names(STATE, "lab-chat") == ["lab.chat-0", "lab.chat-1", "lab2.chat-0"]


def test_stat_sessions_and_status():
    assert parse_stat(STAT, "lab-chat", "lab.chat-0") == {"status": "UP", "sessions": 2, "queued": 0}
    assert parse_stat(STAT, "lab-chat", "lab.chat-1")["status"] == "DRAIN"
    assert parse_stat(STAT, "lab-embed", "lab.chat-0") is None
