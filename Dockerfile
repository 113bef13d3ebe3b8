# hashgate runtime image: the static `balancer`, `api`, `cluster` and `worker` binaries in
# an otherwise empty (`scratch`) image, running as a non-root user.
#
# Build it with `./docker/build.sh` (see the README's Docker section). That one
# command works on any machine:
#   - with a Rust toolchain on the host it compiles the static binaries there
#     and builds `--target prebuilt`, which needs no base image from a registry
#     (`FROM scratch` is built in), so it also works fully offline;
#   - without one (`HASHGATE_BUILD=docker`, or no `cargo` on PATH) it builds
#     `--target runtime`, compiling inside the official `rust` image.
# Plain `docker compose build` uses the last stage (`runtime`) as well.
#
# Why static glibc rather than musl: no extra Rust target or C toolchain is
# needed, and glibc >= 2.34 resolves names (/etc/hosts, /etc/resolv.conf)
# without loading NSS modules, which a scratch image would not have.
#
# The stages are ordered so that the classic (non-BuildKit) builder, which
# builds every stage up to `--target`, never touches the `rust` image when
# asked for `prebuilt`.

# ---- shared runtime settings ------------------------------------------------
FROM scratch AS base
LABEL org.opencontainers.image.title="hashgate" \
      org.opencontainers.image.description="Sticky consistent-hash HTTP balancer and API replicas" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
# 65532 is the conventional "nonroot" uid/gid of distroless images; scratch
# has no /etc/passwd, and a numeric user needs none.
USER 65532:65532
# balancer, api (first replica); `cluster` uses 13003 and 13004 upwards.
EXPOSE 13003 13004
# No HEALTHCHECK here: the image holds three programs on different ports, so
# each compose service / manifest names its own probe (`/<binary> healthcheck`).
CMD ["/balancer"]

# ---- binaries compiled on the host by docker/build.sh ----------------------
FROM base AS prebuilt
# A directory copy, not a glob: it succeeds even when docker/bin is still empty
# (the classic builder builds this stage on the way to `runtime`, too).
COPY docker/bin/ /

# ---- compile inside Docker (needs the `rust` image from a registry) --------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The explicit --target keeps build scripts and proc-macros (compiled for the
# host, loaded by rustc) dynamic while the final binaries are static.
RUN target="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" \
        --bin balancer --bin api --bin cluster --bin worker \
 && mkdir -p /out \
 && cp "target/$target/release/balancer" "target/$target/release/api" \
       "target/$target/release/cluster" "target/$target/release/worker" /out/

# ---- default: the runtime image built from the builder stage --------------
FROM base AS runtime
COPY --from=builder /out/ /
