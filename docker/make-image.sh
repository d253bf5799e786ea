#!/usr/bin/env bash
# Build the simstream image with no container registry and no network access from
# inside the build:
#   1. a local base image: Debian bookworm made by debootstrap (minbase, with
#      python3 with venv, iproute2) and imported; the root file system is kept
#      as a tarball in the cache, so the next build imports it in seconds;
#   2. a wheelhouse on the host: simstream's wheel and every wheel its extras
#      need (pip download with the host's indexes, torch included);
#   3. docker build with BASE_IMAGE set to that base; the image installs the
#      wheelhouse with pip --no-index.
# With a registry, plain `docker build -t simstream .` works too (python:3.11-slim).
#
# Environment: IMAGE (simstream:latest), BASE (simstream-base:bookworm), EXTRAS
# (consumer), TORCH_SPEC (torch==2.13.0+cpu), TORCH_INDEX (none), PYTHON (.venv/bin/python, else python3: it builds the wheel with
# its own setuptools >= 77 and its pip fills the wheelhouse; Python 3.11 like the
# base), MIRROR (the first Debian URI in the host's apt sources), CACHE
# (${XDG_CACHE_HOME:-~/.cache}/simstream), TIMEOUT_S (900 for each long step).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-simstream:latest}
BASE=${BASE:-simstream-base:bookworm}
EXTRAS=${EXTRAS:-consumer}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/simstream}
TIMEOUT_S=${TIMEOUT_S:-900}
# the CPU build of torch (a CUDA build pulls several GB of nvidia wheels); its
# file comes from the host's pip indexes (pip's find-links, extra-index-url) or
# TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) when set
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
TORCH_INDEX=${TORCH_INDEX:-}
WHEELHOUSE=docker/wheelhouse

say() { printf 'make-image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
t0=$(date +%s)

command -v docker >/dev/null || die "no docker client (apt-get install docker.io)"
timeout 20 docker info >/dev/null 2>&1 || die "the Docker engine does not answer (start dockerd)"

mirror() {
  if [ -n "${MIRROR:-}" ]; then echo "$MIRROR"; return; fi
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if($i ~ /^https?:/){print $i; exit}}' /etc/apt/sources.list)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

# 1. the base image
if docker image inspect "$BASE" >/dev/null 2>&1; then
  say "base $BASE: present"
else
  mkdir -p "$CACHE"
  tarball="$CACHE/base-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || die "no debootstrap (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root" "$tarball.partial"' EXIT
    say "base: debootstrap bookworm from $(mirror) (about two minutes)"
    timeout "$TIMEOUT_S" debootstrap --variant=minbase \
      --include=python3,python3-venv,iproute2 \
      bookworm "$root" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 \
      || die "debootstrap failed; see $CACHE/debootstrap.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$root"
    trap - EXIT
  fi
  say "base: importing $tarball as $BASE"
  timeout "$TIMEOUT_S" docker import "$tarball" "$BASE" >/dev/null
fi

# 2. the wheelhouse: the project's wheel and everything its extras need
rm -rf "$WHEELHOUSE"/*.whl
mkdir -p "$WHEELHOUSE"
say "wheelhouse: simstream and simstream[$EXTRAS]"
made=()  # what the in-tree build writes and was not there before: removed after
for d in build simstream.egg-info; do [ -e "$d" ] || made+=("$d"); done
timeout "$TIMEOUT_S" "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELHOUSE" . \
  || die "could not build simstream's wheel"
[ ${#made[@]} -eq 0 ] || rm -rf "${made[@]}"
wheel=$(ls "$WHEELHOUSE"/simstream-*.whl)
torch=()
case ",$EXTRAS," in *,consumer,*|*,all,*) torch=("$TORCH_SPEC") ;; esac
timeout "$TIMEOUT_S" "$PYTHON" -m pip download -q --only-binary=:all: -d "$WHEELHOUSE" \
  ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$wheel[$EXTRAS]" "${torch[@]}" \
  || die "pip could not gather the wheels for simstream[$EXTRAS] ${torch[*]}"

# 3. the image, unless one built from the same inputs is there already
key=$( { cat Dockerfile; echo "$BASE $EXTRAS"; docker image inspect -f '{{.Id}}' "$BASE";
         (cd "$WHEELHOUSE" && sha256sum -- *.whl | grep -v ' simstream-');
         unzip -p "$wheel" 'simstream/*' 'simstream-*.dist-info/METADATA' 2>/dev/null \
           || cat "$wheel"; } | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{ index .Config.Labels "org.simstream.inputs" }}' "$IMAGE" \
        2>/dev/null)" = "$key" ]; then
  say "image: $IMAGE is up to date (inputs $key)"
else
  say "image: $IMAGE from $BASE (inputs $key)"
  timeout "$TIMEOUT_S" docker build -q -t "$IMAGE" --build-arg BASE_IMAGE="$BASE" \
    --build-arg EXTRAS="$EXTRAS" --label "org.simstream.inputs=$key" . >/dev/null \
    || die "docker build failed"
fi
say "done: $IMAGE in $(( $(date +%s) - t0 )) s"
