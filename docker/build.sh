#!/usr/bin/env bash
# Builds the hashgate runtime image (default tag hashgate:latest) from this
# repository. One command for every machine:
#
#   ./docker/build.sh
#
# - With `cargo` on PATH (or HASHGATE_BUILD=host) the four binaries are
#   compiled here as static executables and copied into a `FROM scratch`
#   image (Dockerfile stage `prebuilt`). Nothing is pulled from a registry,
#   so this works offline and on CI machines that reach no registry.
# - Without `cargo` (or HASHGATE_BUILD=docker) Docker compiles them itself in
#   the official `rust` image (stage `runtime`; needs registry access).
#
# Variables: HASHGATE_IMAGE (tag, default hashgate:latest), HASHGATE_BUILD
# (auto | host | docker), HASHGATE_PROFILE (cargo profile for host builds,
# default release).
set -euo pipefail

cd "$(dirname "$0")/.."
image="${HASHGATE_IMAGE:-hashgate:latest}"
mode="${HASHGATE_BUILD:-auto}"
profile="${HASHGATE_PROFILE:-release}"
bins=(balancer api cluster worker)

if [[ "$mode" == auto ]]; then
    if command -v cargo >/dev/null 2>&1; then mode=host; else mode=docker; fi
fi

case "$mode" in
host)
    # An explicit --target is what makes +crt-static safe: build scripts and
    # proc-macros are still built for the host (dynamic), only the final
    # binaries are linked statically (needs glibc's libc.a, in libc6-dev).
    triple="$(rustc -vV | sed -n 's/^host: //p')"
    bin_args=()
    for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --locked --profile "$profile" --target "$triple" "${bin_args[@]}"
    # Cargo names the output directory of the `dev` profile `debug`.
    outdir="target/$triple/$([[ "$profile" == dev ]] && echo debug || echo "$profile")"
    mkdir -p docker/bin
    for b in "${bins[@]}"; do
        install -m 0755 "$outdir/$b" "docker/bin/$b"
    done
    docker build --target prebuilt -t "$image" .
    ;;
docker)
    docker build --target runtime -t "$image" .
    ;;
*)
    echo "build.sh: HASHGATE_BUILD must be auto, host or docker, not '$mode'" >&2
    exit 2
    ;;
esac
echo "build.sh: built $image ($mode)"
