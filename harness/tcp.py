"""The TCP model every part of tpbench shares: states, transitions, event kinds, sides, the seven
tracepoints and the flow sample rate. Nothing else spells them out.

Light on purpose: agents import it into processes whose CPU is measured, so it imports nothing at
all. The C side (the BPF programs, the ring-buffer consumer, the churn agent) gets the same numbers
as -D flags from `c_defines()`, so no number is kept in step by a comment.
"""

from __future__ import annotations

# include/net/tcp_states.h, in its numbering (TCP_ESTABLISHED = 1 .. TCP_NEW_SYN_RECV = 12)
(ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN,
 CLOSING, NEW_SYN_RECV) = (
    "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT",
    "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV")
STATE_NAMES: dict[int, str] = dict(enumerate(
    (ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN,
     CLOSING, NEW_SYN_RECV), start=1))
STATE_NUMBERS: dict[str, int] = {name: number for number, name in STATE_NAMES.items()}
NSTATES = 16  # the BPF maps' state dimension: 12 states and 0, rounded up to a power of two
# The order a connection's life meets them (tables are sorted by it)
LIFE_ORDER = (CLOSE, LISTEN, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING,
              LAST_ACK, TIME_WAIT, NEW_SYN_RECV)


def state_name(number: int) -> str:
    """A kernel state number as its name; an unknown number as itself."""
    return STATE_NAMES.get(number, str(number))


def arrow(old: str, new: str) -> str:
    """A transition as every record spells it: "SYN_SENT->ESTABLISHED"."""
    return f"{old}->{new}"


def transition(old: int, new: int) -> str:
    """Two kernel state numbers as a transition: (2, 1) -> "SYN_SENT->ESTABLISHED"."""
    return arrow(state_name(old), state_name(new))


def ends(transition: str) -> tuple[str, str]:
    """"SYN_SENT->ESTABLISHED" -> ("SYN_SENT", "ESTABLISHED")."""
    old, _, new = transition.partition("->")
    return old, new


def path(*states: str) -> dict[str, int]:
    """A path through the states, one of each transition: path(A, B, C) = {"A->B": 1, "B->C": 1}."""
    return {arrow(old, new): 1 for old, new in zip(states, states[1:])}


# The state transitions of one connection, by phase and role. The server's child socket is cloned
# from the listener, hence LISTEN->SYN_RECV. A socket entering TIME_WAIT (or an orphaned FIN_WAIT2)
# becomes a timewait sock, which takes no tcp_set_state: FIN_WAIT2->CLOSE is the full socket's last
# transition, whether the peer's FIN came before or with the ACK of our own.
OPEN = {"client": path(CLOSE, SYN_SENT, ESTABLISHED), "server": path(LISTEN, SYN_RECV, ESTABLISHED)}
ACTIVE_CLOSE = path(ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE)
PASSIVE_CLOSE = path(ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE)
ABORT = path(ESTABLISHED, CLOSE)  # SO_LINGER {1, 0} on the aborting side (tcp_disconnect), tcp_reset on the peer
REFUSED = path(CLOSE, SYN_SENT, CLOSE)  # a RST answers the SYN
LISTENER = path(CLOSE, LISTEN, CLOSE)  # a listening socket, once per trial


# The common event schema's kinds; a kind's number is its index (the C side's KIND_* flags)
EVENT_KINDS = ("state_change", "retransmit", "synack_retransmit", "reset_sent", "reset_received",
               "sock_destroy", "probe")
KIND_NUMBERS: dict[str, int] = {kind: number for number, kind in enumerate(EVENT_KINDS)}
KIND_NAMES: dict[int, str] = dict(enumerate(EVENT_KINDS))
KIND_STATE_CHANGE, KIND_SOCK_DESTROY = KIND_NUMBERS["state_change"], KIND_NUMBERS["sock_destroy"]

# The pair's two ends; a third "other" is a local address that is neither (the C side's side 2)
SIDES = ("client", "server")
SIDE_NAMES = (*SIDES, "other")

# The seven stable TCP tracepoints (sock:inet_sock_set_state since 4.16, the tcp:* ones 4.15/4.16):
# short name (-p hooks=...) -> (tracepoint, the kind it reports)
HOOKS: dict[str, tuple[str, str]] = {
    "state": ("sock:inet_sock_set_state", "state_change"),
    "retransmit": ("tcp:tcp_retransmit_skb", "retransmit"),
    "synack": ("tcp:tcp_retransmit_synack", "synack_retransmit"),
    "send_reset": ("tcp:tcp_send_reset", "reset_sent"),
    "receive_reset": ("tcp:tcp_receive_reset", "reset_received"),
    "destroy": ("tcp:tcp_destroy_sock", "sock_destroy"),
    "probe": ("tcp:tcp_probe", "probe"),
}
TRACEPOINTS: tuple[str, ...] = tuple(tracepoint for tracepoint, _ in HOOKS.values())
TRACEPOINT_KINDS: dict[str, str] = dict(HOOKS.values())

# The kprobe and fentry backends' hooks (-p hooks=...: the kernel functions behind the events,
# resolved per kernel in backends/kprobe.py) -> the tracepoint reporting the same events, their
# witness; a hook reports its tracepoint's kind (TRACEPOINT_KINDS)
FUNCTION_HOOKS: dict[str, str] = {
    "state": "sock:inet_sock_set_state",  # tcp_set_state
    "state_other": "sock:inet_sock_set_state",  # inet_sk_set_state
    "listen": "sock:inet_sock_set_state",  # inet_csk_listen_start
    "retransmit": "tcp:tcp_retransmit_skb",
    "synack": "tcp:tcp_retransmit_synack",
    "send_reset": "tcp:tcp_send_reset",  # tcp_v4_send_reset
    "active_reset": "tcp:tcp_send_reset",  # tcp_send_active_reset
    "receive_reset": "tcp:tcp_receive_reset",
    "destroy": "tcp:tcp_destroy_sock",
    "probe": "tcp:tcp_probe",  # tcp_rcv_established
}

# One connection in FLOW_SAMPLE (by client port) is followed event by event, by the workload and
# by the observers alike
FLOW_SAMPLE = 64


def c_defines() -> list[str]:
    """The model as gcc/clang -D flags, for every C source that needs a number of it."""
    flags = [f"-DFLOW_SAMPLE={FLOW_SAMPLE}", f"-DNSTATES={NSTATES}"]
    flags += [f"-DKIND_{kind.upper()}={number}" for kind, number in KIND_NUMBERS.items()]
    return flags
