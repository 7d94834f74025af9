#!/usr/bin/env bash
# Idempotent set-up for tpbench: Debian packages, then a virtual environment (.venv) in which
# `import bcc` works without the rest of the system's Python packages.
#
# bcc is not on PyPI. Debian's python3-bpfcc is pure Python over libbcc (ctypes), so the venv
# gets one directory on its path holding a single symlink, bcc -> Debian's package: nothing else
# from /usr/lib/python3/dist-packages leaks in (no --system-site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  python3-bpfcc libbpfcc     # bcc: the tracepoint and kprobe backends
  libbpf-dev                 # the tracepoint backend's C ring-buffer consumer (built with gcc)
  linux-headers-amd64        # headers for bcc's compiler (fallback headers on kernels without their own)
  bpftool                    # independent view of loaded programs (cleanup checks, bpf_stats, the preflight's
                             # search for other tracers on the hooks)
  bpftrace bpfcc-tools       # the tools users compare against (the peer backends); the preflight test's foreign tracer
  linux-perf                 # an independent, non-BPF tracer for the tests (perf stat + ftrace filter)
  iptables iproute2 ethtool  # loss workloads, namespaces, offload settings
  tcpdump libpcap0.8         # the libpcap backend's tcpdump consumer and an independent capture
  libpcap-dev                # the libpcap backend's C consumer (pcap_consumer.c, built with gcc)
  python3-venv gcc make      # the venv and the C reference generator
  iperf3                     # the stream benchmark's reference (benchmarks/)
  qemu-system-x86 busybox-static  # `tpbench vm`: virtme-ng's qemu, and the static busybox of its initramfs
  linux-image-amd64          # the default second kernel for `tpbench vm` (6.1, kprobes on; its
                             # exact headers are linux-headers-amd64 above)
  linux-image-6.12-amd64 linux-headers-6.12-amd64  # the third kernel (6.12: after 6.7's miss
                             # counting, before 6.18), with its exact headers
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages (${missing[*]}); run 'make setup' as root" >&2
    exit 2
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=/usr/bin/python3   # Debian's interpreter: the one python3-bpfcc is built and tested for
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi

bcc_dir=$("$PY" -c 'import bcc, os; print(os.path.dirname(bcc.__file__))')
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/bcc-only
ln -sfn "$bcc_dir" .venv/bcc-only/bcc
echo "$(pwd)/.venv/bcc-only" > "$site/tpbench-bcc-only.pth"

.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# The C helpers (the churn agent, the ring-buffer and capture consumers), into ~/.cache/tpbench/bin,
# so that a VM, which sees this host's files read-only, finds them built (harness/cbuild.py)
.venv/bin/python -m harness.cbuild

.venv/bin/python - <<'PY'
import bcc, pyroute2
import pcapy, dpkt  # the pcap backend: pcapy-ng's wheel bundles libpcap, no libpcap-dev
import scapy, pytest  # the tests' ('.[test]'): scapy is their independent decoder, never the harness's
print("setup: .venv ready (bcc %s from %s)" % (getattr(bcc, "__version__", "?"), bcc.__path__[0]))
PY
