#!/usr/bin/env bash
# One session on a GPU host for issue 17's three figures, side by side in one run:
#
#   1. the plain socket anchor (TCP and zmq, 1/2/4/8 streams) and `simstream emit
#      --processes N` beside it (bench/bench_plain_socket.py --cases tcp,zmq,emit);
#   2. socket vs random, layouts production and fast, synthetic 20 ms model,
#      16 x 1x1920x1920 float32 uncompressed, 1 stream (bench/bench_socket_vs_random.py);
#   3. the same with 4 streams;
#   and, between them, the fast layout's receive path alone, pyzmq frames + a
#   decode copy against recv_into + decode in place (bench/bench_fast_receive.py).
#
# Every step has its own time limit (SIGINT to its process group, then SIGKILL)
# and the whole session a deadline (TOTAL_S, default 500 s), so one hang cannot
# eat the rest. Results go to $OUT (at most 7 files): env.txt, plain_emit.json,
# fast_receive.json, svr_streams1.json, svr_streams4.json, summary.txt,
# session.log. The summary is printed at the end.
#
#   bash bench/gpu_session.sh              # on the GPU host (CUDA)
#   SMALL=1 bash bench/gpu_session.sh --no-gpu   # a dry run anywhere: tiny sizes, CPU
#
# --no-gpu (or NO_GPU=1) runs the consumer on the CPU; without it the script
# falls back to the CPU by itself, loudly, when torch sees no CUDA device.
# SMALL=1: 1 MiB messages, 1 and 2 streams, 2x1x128x128 batches, short runs.
set -u

PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-session-out}
TOTAL_S=${TOTAL_S:-500}
SMALL=${SMALL:-0}
NO_GPU=${NO_GPU:-0}
for arg in "$@"; do
  case "$arg" in
    --no-gpu) NO_GPU=1 ;;
    --small) SMALL=1 ;;
    *) echo "gpu_session.sh: unknown argument $arg (known: --no-gpu, --small)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT" || exit 2
WORK=$(mktemp -d /tmp/gpu-session.XXXXXX) || exit 2
LOG=$OUT/session.log
: >"$LOG"
START=$SECONDS

if [ "$SMALL" = 1 ]; then
  STREAMS=1,2; MSG_MIB=1; ANCHOR_S=1
  BATCH=2; SHAPE=1,128,128; SVR_S=3; SVR_STREAMS="1 2"; RX_MIB=50
else
  STREAMS=1,2,4,8; MSG_MIB=8; ANCHOR_S=3
  BATCH=16; SHAPE=1,1920,1920; SVR_S=15; SVR_STREAMS="1 4"; RX_MIB=6000
fi

say() { echo "$*" | tee -a "$LOG"; }

DEVICE=cuda
if [ "$NO_GPU" = 1 ]; then
  DEVICE=cpu
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
  say "!! torch sees no CUDA device: the consumer runs on the CPU (--device cpu)"
  DEVICE=cpu
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "host: $(uname -a)"
  echo "cpus: $(nproc)"
  echo "python: $("$PY" --version 2>&1)"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>&1
  "$PY" -c "import zmq, trio, pydantic; print('pyzmq', zmq.__version__, 'libzmq', zmq.zmq_version(),
  'trio', trio.__version__, 'pydantic', pydantic.VERSION)" 2>&1
  nvidia-smi -L 2>&1 || true
  for f in net/core/wmem_max net/core/rmem_max net/ipv4/tcp_wmem net/ipv4/tcp_rmem; do
    echo "$f: $(cat /proc/sys/$f 2>/dev/null)"
  done
  echo "device: $DEVICE; small: $SMALL; total limit: ${TOTAL_S} s"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >>"$LOG"

# step NAME LIMIT_S CMD...: run CMD in its own process group, at most LIMIT_S seconds
# (and never past the session's deadline); its output goes to $WORK/NAME.log and the
# session log, its last lines to the terminal
step() {
  local name=$1 limit=$2; shift 2
  local left=$((TOTAL_S - (SECONDS - START) - 15))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -le 5 ]; then
    say "!! $name: skipped, the session's ${TOTAL_S} s are spent"
    return 124
  fi
  say "== $name (at most ${limit} s): $*"
  local t0=$SECONDS rc
  set -m
  "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  set +m
  while kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - t0)) -ge "$limit" ]; then
      say "!! $name: over ${limit} s, interrupting it"
      kill -INT -- "-$pid" 2>/dev/null
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null
      break
    fi
    sleep 1
  done
  wait "$pid"; rc=$?
  cat "$WORK/$name.log" >>"$LOG"
  tail -n 8 "$WORK/$name.log"
  say "== $name: exit $rc after $((SECONDS - t0)) s"
  return "$rc"
}

step anchor_emit 140 "$PY" bench/bench_plain_socket.py --streams "$STREAMS" \
  --msg-mib "$MSG_MIB" --seconds "$ANCHOR_S" --cases tcp,zmq,emit --json "$OUT/plain_emit.json"

step fast_receive 60 "$PY" bench/bench_fast_receive.py --batch "$BATCH" --shape "$SHAPE" \
  --mib "$RX_MIB" --rounds 1 --json "$OUT/fast_receive.json"

for n in $SVR_STREAMS; do
  step "svr_streams$n" 160 "$PY" bench/bench_socket_vs_random.py --out "$WORK/svr$n" \
    --device "$DEVICE" --batch "$BATCH" --shape "$SHAPE" --seconds "$SVR_S" \
    --synthetic-ms 20 --no-peaknet --layouts production,fast --streams "$n"
  if [ -f "$WORK/svr$n/results.json" ]; then
    cp "$WORK/svr$n/results.json" "$OUT/svr_streams$n.json"
  elif [ -f "$WORK/svr_streams$n.log" ]; then
    # cut short: keep the rows it printed (one JSON line per finished socket run)
    grep '^{"case"' "$WORK/svr_streams$n.log" | "$PY" -c \
      'import json, sys; print(json.dumps([json.loads(x) for x in sys.stdin], indent=2))' \
      >"$OUT/svr_streams$n.json"
  fi
done

"$PY" - "$OUT" "$SVR_STREAMS" <<'EOF' | tee "$OUT/summary.txt" | tee -a "$LOG"
import json
import sys
from pathlib import Path

out, svr_streams = Path(sys.argv[1]), [int(x) for x in sys.argv[2].split()]


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def f(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


env = (out / "env.txt").read_text() if (out / "env.txt").exists() else ""
print("== summary")
print("\n".join(l for l in env.splitlines() if l.startswith(("date", "commit", "cpus", "torch", "device"))))
a = load("plain_emit.json")
tcp = {}
if a:
    tcp = {int(k): v for k, v in a["tcp_gbps"].items()}
    zmq = {int(k): v for k, v in a["zmq_gbps"].items()}
    emit = {int(k): v for k, v in a.get("emit_gbps", {}).items()}
    cpu = {c: {int(k): v for k, v in a.get(f"{c}_cpu_s_per_gb", {}).items()}
           for c in ("tcp", "zmq", "emit")}
    print(f"\nanchor and emitter: {a['msg_bytes'] / (1 << 20):.0f} MiB messages, "
          f"{a['seconds']:g} s per case; one-thread memcpy {a['memcpy_gbps']:.2f} GB/s")
    print("streams | tcp GB/s | zmq GB/s | emit --processes N GB/s | emit/tcp | emit/zmq "
          "| sender CPU s/GB tcp / zmq / emit")
    for n in sorted(tcp):
        e = emit.get(n)
        print(f"{n:7d} | {f(tcp.get(n)):>8} | {f(zmq.get(n)):>8} | {f(e):>23} | "
              f"{f(e / tcp[n] if e and tcp.get(n) else None):>8} | "
              f"{f(e / zmq[n] if e and zmq.get(n) else None):>8} | "
              + " / ".join(f(cpu[c].get(n)) for c in ("tcp", "zmq", "emit")))
    if 1 in emit and 1 in tcp:
        print(f"goal 3: one process {emit[1] / tcp[1]:.2f} of one plain TCP stream (>= 0.8); "
              f"N processes: " + ", ".join(f"{n}: {emit[n] / tcp[n]:.2f}" for n in sorted(emit)
                                           if n in tcp))
else:
    print("\nanchor and emitter: no results (see session.log)")
fr = load("fast_receive.json")
if fr:
    print(f"\nreceive path alone, one stream, {fr['batch']}x{'x'.join(map(str, fr['shape']))} "
          f"({fr['message_bytes'] / 1e6:.0f} MB messages): "
          f"zmq frames + decode copy {fr['zmq']['gbps']:.2f} GB/s, "
          f"{fr['zmq']['cpu_s_per_gb']:.3f} CPU s/GB; recv_into + in place "
          f"{fr['into']['gbps']:.2f} GB/s, {fr['into']['cpu_s_per_gb']:.3f} CPU s/GB")
else:
    print("\nreceive path alone: no results (see session.log)")
for n in svr_streams:
    rows = load(f"svr_streams{n}.json")
    print(f"\nsocket vs random, {n} stream(s):")
    if not rows:
        print("  no results (see session.log)")
        continue
    print("layout | batch x shape | random samples/s | socket samples/s | socket/random | "
          "socket MB/s | / plain tcp same streams | verdict | received/processed/lost")
    for r in rows:
        t = tcp.get(n)
        mbs = r.get("socket_mb_per_s")
        acc = r.get("socket_accounting") or {}
        print(f"{r['layout']} | {r['batch']}x{'x'.join(map(str, r['shape']))} | "
              f"{f(r['random_samples_per_s'], '.1f')} | {f(r['socket_samples_per_s'], '.1f')} | "
              f"{f(r['ratio'], '.3f')} | {f(mbs, '.0f')} | "
              f"{f(mbs / 1e3 / t if mbs and t else None)} | {r.get('socket_verdict')} | "
              f"{acc.get('received')}/{acc.get('processed')}/{acc.get('lost')}")
EOF
say "== done in $((SECONDS - START)) s; results in $OUT"
rm -rf "$WORK"
