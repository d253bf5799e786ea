#!/usr/bin/env bash
# One session on a GPU host for issue 17's three figures, side by side in one run:
#
#   anchor: the plain socket anchor (TCP and zmq, 1/2/4/8 streams) and `simstream
#     emit --processes N` beside it, into recv_into receivers
#     (bench/bench_plain_socket.py --cases tcp,zmq,emit);
#   receive: the fast layout's receive path alone, pyzmq frames + a decode copy
#     against recv_into + decode in place (bench/bench_fast_receive.py);
#   svr: socket vs random, layouts production and fast, synthetic 20 ms model,
#     16 x 1x1920x1920 float32 uncompressed, 4 and 8 streams
#     (bench/bench_socket_vs_random.py);
#   ray: the Ray layouts against random mode (bench/bench_scale.py): production's
#     with 8 MB batches and a synthetic 5 ms model, production's and fast (each
#     inference actor receiving for itself) with 236 MB batches and PeakNet tiny;
#     skipped, and said, where Ray cannot be imported.
#
# PARTS (default "anchor svr ray"; "receive" is there to add) picks the parts, so
# a session can be split over calls of a bounded length. Every step has its own
# time limit (SIGINT to its process group, then SIGKILL) and the whole session a
# deadline (TOTAL_S, default 500 s), so one hang cannot eat the rest. Results go
# to $OUT: env.txt, plain_emit.json (senders cycling one buffer) and
# plain_emit_pool<N>.json (N buffers, for each N in ANCHOR_POOLS, default "1 4"),
# fast_receive.json, svr_streams<N>.json, svr_records.tar.xz (the socket-vs-random runs' batches.csv and summary.json),
# scale_8mb.json, scale_236mb.json, summary.txt, session.log (split a session's
# parts over calls where a call brings back at most 8 files). The summary is
# printed at the end.
#
#   bash bench/gpu_session.sh              # on the GPU host (CUDA)
#   PARTS="anchor svr" TOTAL_S=575 bash bench/gpu_session.sh   # then:
#   PARTS=ray TOTAL_S=575 bash bench/gpu_session.sh
#
# On a 16-core H100 host "anchor svr" took 300 s and "ray" 250 s before the fast
# layout's 236 MB rows were added to it (about 100 s more): all parts together
# overrun a 10-minute call, so a lent machine takes them in two.
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

PARTS=${PARTS:-anchor svr ray}
ANCHOR_POOLS=${ANCHOR_POOLS:-1 4}
if [ "$SMALL" = 1 ]; then
  STREAMS=1,2; MSG_MIB=1; ANCHOR_S=1
  BATCH=2; SHAPE=1,128,128; SVR_S=3; SVR_STREAMS="1 2"; RX_MIB=50
  RAY_SMALL_SHAPE=1,64,64; RAY_BIG_BATCH=2; RAY_BIG_SHAPE=1,128,128; RAY_S=4
  RAY_SMALL_CASES=1x1x1; RAY_BIG_CASES=2x2x1; RAY_BIG_MODEL=synthetic:20
else
  STREAMS=1,2,4,8; MSG_MIB=8; ANCHOR_S=3
  BATCH=16; SHAPE=1,1920,1920; SVR_S=20; SVR_STREAMS="4 8"; RX_MIB=6000
  RAY_SMALL_SHAPE=1,512,512; RAY_BIG_BATCH=16; RAY_BIG_SHAPE=1,1920,1920; RAY_S=15
  RAY_SMALL_CASES=1x1x1,4x4x1; RAY_BIG_CASES=4x4x1,8x8x1; RAY_BIG_MODEL=peaknet:tiny
fi
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

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
  # COMMIT: the tree's commit where the host's copy carries no (or a stale) .git
  echo "commit: ${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "host: $(uname -a)"
  echo "cpus: $(nproc)"
  lscpu 2>/dev/null | grep -E "^(Model name|L2 cache|L3 cache)" | sed 's/  */ /g'
  echo "python: $("$PY" --version 2>&1)"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>&1
  "$PY" -c "import zmq, trio, pydantic; print('pyzmq', zmq.__version__, 'libzmq', zmq.zmq_version(),
  'trio', trio.__version__, 'pydantic', pydantic.VERSION)" 2>&1
  nvidia-smi -L 2>&1 || true
  for f in net/core/wmem_max net/core/rmem_max net/ipv4/tcp_wmem net/ipv4/tcp_rmem; do
    echo "$f: $(cat /proc/sys/$f 2>/dev/null)"
  done
  "$PY" -c "import ray; print('ray', ray.__version__)" 2>&1 | tail -n 1
  echo "device: $DEVICE; small: $SMALL; parts: $PARTS; total limit: ${TOTAL_S} s"
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

if part anchor; then
  # pool 1: every sender reads one cache-hot buffer (the issue's anchor); a larger
  # pool reads DRAM as a producer of fresh data does (plain_emit_pool<N>.json)
  for pool in $ANCHOR_POOLS; do
    name=plain_emit; [ "$pool" = 1 ] || name=plain_emit_pool$pool
    step "anchor_emit_pool$pool" 140 "$PY" bench/bench_plain_socket.py --streams "$STREAMS" \
      --msg-mib "$MSG_MIB" --seconds "$ANCHOR_S" --cases tcp,zmq,emit --pool "$pool" \
      --json "$OUT/$name.json"
  done
fi

if part receive; then
  step fast_receive 60 "$PY" bench/bench_fast_receive.py --batch "$BATCH" --shape "$SHAPE" \
    --mib "$RX_MIB" --rounds 1 --json "$OUT/fast_receive.json"
fi

if part svr; then
  for n in $SVR_STREAMS; do
    step "svr_streams$n" 200 "$PY" bench/bench_socket_vs_random.py --out "$WORK/svr$n" \
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
fi

if part ray; then
  if "$PY" -c "import ray" 2>>"$LOG"; then
    step ray_8mb 200 "$PY" bench/bench_scale.py --cases "$RAY_SMALL_CASES" --model synthetic:5 \
      --batch 8 --shape "$RAY_SMALL_SHAPE" --duration "$RAY_S" --device "$DEVICE" \
      --json "$OUT/scale_8mb.json"
    step ray_236mb 300 "$PY" bench/bench_scale.py --cases "$RAY_BIG_CASES" \
      --model "$RAY_BIG_MODEL" --batch "$RAY_BIG_BATCH" --shape "$RAY_BIG_SHAPE" \
      --duration "$RAY_S" --device "$DEVICE" --layouts production,fast \
      --json "$OUT/scale_236mb.json"
  else
    say "!! ray: Ray cannot be imported here; the Ray layout is not measured"
  fi
fi

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


def pinned(pool):
    """host buffers pinned on the run's clock (allocations not reserved at warm-up)
    and the seconds all pinning took, as n / s"""
    if not pool:
        return "-"
    return f"{pool['allocations'] - pool.get('reserved', 0)} / {pool['alloc_s']:.2f}"


env = (out / "env.txt").read_text() if (out / "env.txt").exists() else ""
print("== summary")
print("\n".join(l for l in env.splitlines() if l.startswith(("date", "commit", "cpus", "torch", "device"))))
tcp = {}  # the pool-1 anchor's, for the socket-vs-random rows' "/ plain tcp" column
anchors = [(p.name, load(p.name)) for p in sorted(out.glob("plain_emit*.json"))]
for name, a in anchors:
    if not a:
        continue
    tcp_a = {int(k): v for k, v in a["tcp_gbps"].items()}
    if a.get("pool", 1) == 1:
        tcp = tcp_a
    zmq = {int(k): v for k, v in a["zmq_gbps"].items()}
    emit = {int(k): v for k, v in a.get("emit_gbps", {}).items()}
    cpu = {c: {int(k): v for k, v in a.get(f"{c}_cpu_s_per_gb", {}).items()}
           for c in ("tcp", "zmq", "emit")}
    print(f"\nanchor and emitter ({name}): {a['msg_bytes'] / (1 << 20):.0f} MiB messages, "
          f"{a.get('pool', 1)} buffer(s) per sender, "
          f"{a['seconds']:g} s per case; one-thread memcpy {a['memcpy_gbps']:.2f} GB/s; "
          f"emit's receivers: {a.get('emit_sink')}")
    print("streams | tcp GB/s | zmq GB/s | emit --processes N GB/s | emit/tcp | emit/zmq "
          "| sender CPU s/GB tcp / zmq / emit")
    for n in sorted(tcp_a):
        e = emit.get(n)
        print(f"{n:7d} | {f(tcp_a.get(n)):>8} | {f(zmq.get(n)):>8} | {f(e):>23} | "
              f"{f(e / tcp_a[n] if e and tcp_a.get(n) else None):>8} | "
              f"{f(e / zmq[n] if e and zmq.get(n) else None):>8} | "
              + " / ".join(f(cpu[c].get(n)) for c in ("tcp", "zmq", "emit")))
    if 1 in emit and 1 in tcp_a:
        print(f"goal 3: one process {emit[1] / tcp_a[1]:.2f} of one plain TCP stream (>= 0.8); "
              f"N processes: " + ", ".join(f"{n}: {emit[n] / tcp_a[n]:.2f}" for n in sorted(emit)
                                           if n in tcp_a))
if not any(a for _, a in anchors):
    print("\nanchor and emitter: no results (see session.log)")
fr = load("fast_receive.json")
if fr:
    print(f"\nreceive path alone, one stream, {fr['batch']}x{'x'.join(map(str, fr['shape']))} "
          f"({fr['message_bytes'] / 1e6:.0f} MB messages): "
          f"zmq frames + decode copy {fr['zmq']['gbps']:.2f} GB/s, "
          f"{fr['zmq']['cpu_s_per_gb']:.3f} CPU s/GB; recv_into + in place "
          f"{fr['into']['gbps']:.2f} GB/s, {fr['into']['cpu_s_per_gb']:.3f} CPU s/GB"
          + (f"; a read per buffer {fr['into-chunks']['gbps']:.2f} GB/s, "
             f"{fr['into-chunks']['cpu_s_per_gb']:.3f} CPU s/GB" if "into-chunks" in fr else ""))
else:
    print("\nreceive path alone: no results (see session.log)")
for n in svr_streams:
    rows = load(f"svr_streams{n}.json")
    print(f"\nsocket vs random, {n} stream(s):")
    if not rows:
        print("  no results (see session.log)")
        continue
    print("layout | batch x shape | random samples/s | socket samples/s | socket/random | "
          "socket MB/s | / plain tcp same streams | verdict | received/processed/lost | "
          "pinned in run random, socket (buffers / s of all pinning)")
    for r in rows:
        t = tcp.get(n)
        mbs = r.get("socket_mb_per_s")
        acc = r.get("socket_accounting") or {}
        print(f"{r['layout']} | {r['batch']}x{'x'.join(map(str, r['shape']))} | "
              f"{f(r['random_samples_per_s'], '.1f')} | {f(r['socket_samples_per_s'], '.1f')} | "
              f"{f(r['ratio'], '.3f')} | {f(mbs, '.0f')} | "
              f"{f(mbs / 1e3 / t if mbs and t else None)} | {r.get('socket_verdict')} | "
              f"{acc.get('received')}/{acc.get('processed')}/{acc.get('lost')} | "
              f"{pinned(r.get('random_host_pool'))}, {pinned(r.get('socket_host_pool'))}")
for name, what in (("scale_8mb.json", "8 MB batches"), ("scale_236mb.json", "236 MB batches")):
    sc = load(name)
    if not sc:
        continue
    base = sc["baseline"]
    model = sc["model"]
    label = (f"PeakNet {model['size']}" if model["kind"] == "peaknet"
             else f"synthetic {model['compute_ms']:g} ms")
    print(f"\nRay layouts, {what}, {label}: random "
          f"{f(base['samples_per_s'], '.1f')} samples/s, pinned in run "
          f"{pinned(base.get('host_pool'))}")
    print("ranks x receivers x actors | layout | samples/s | MB/s | vs random | GPU busy | "
          "Q1 mean | verdict | received/processed/lost | pinned in run (buffers / s of all "
          "pinning)")
    for r in sc["rows"]:
        vs = r["samples_per_s"] / base["samples_per_s"] if base.get("samples_per_s") else None
        print(f"{r['ranks']}x{r['receivers']}x{r['actors']} | {r.get('layout', 'production')} | "
              f"{f(r['samples_per_s'], '.1f')} | "
              f"{f(r['mb_per_s'], '.0f')} | {f(vs)} | {f(r['gpu_busy'])} | "
              f"{f(r['q1_mean'])} | {r.get('verdict')} | "
              f"{r['received']}/{r['processed']}/{r['lost']} | {pinned(r.get('host_pool'))}")
EOF
# the socket-vs-random runs' per-batch records and summaries, for timelines afterwards
if ls "$WORK"/svr*/*/*/batches.csv >/dev/null 2>&1; then
  (cd "$WORK" && tar -cJf "$OUT/svr_records.tar.xz" svr*/*/*/batches.csv svr*/*/*/summary.json)
fi
say "== done in $((SECONDS - START)) s; results in $OUT"
rm -rf "$WORK"
