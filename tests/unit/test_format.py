from harness.kernel import parse_format

# tcp:tcp_send_reset as Linux 6.18 prints it (note the enum unknown to 6.1 headers).
SEND_RESET = """\
name: tcp_send_reset
ID: 2280
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: "skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc state=%s reason=%s", REC->skbaddr
"""


def test_format_fields_skip_the_common_header_and_keep_layout():
    fields = {f["name"]: f for f in parse_format(SEND_RESET)}
    assert list(fields) == ["skbaddr", "skaddr", "state", "reason", "saddr", "daddr"]
    assert fields["reason"] == {
        "name": "reason", "type": "enum sk_rst_reason", "offset": 28, "size": 4, "signed": False,
    }
    assert fields["saddr"]["type"] == "__u8[28]"
    assert fields["state"]["signed"] is True
    assert fields["daddr"]["offset"] == 60
