# cachesvc and the kvstash CLI on Debian 12, in two stages: a build stage with the toolchain and
# -dev packages (scripts/install_deps.sh), and a slim runtime stage with only the shared
# libraries the two binaries link, running as uid 65532 (the chart's podSecurityContext).
#   docker build -t kvstash/cachesvc:0.1.0 .
# No Docker engine runs where this repository is developed; docs/deploy.md "Container image" says
# how the image was built there instead (buildah from a debootstrap root) and what was checked.

FROM debian:12 AS build
WORKDIR /src
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN scripts/install_deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# Which UCX (docs/deploy.md "Which UCX"), chosen with --build-arg UCX=...:
#   wheel (default): UCX 1.22 from the PyPI wheel libucx-cu13 (scripts/build_ucx_cuda.sh): TCP,
#     shared memory, CMA and CUDA, but built without verbs, so no RDMA; peers read with Fetch,
#     and a reader dying mid-transfer leaves the serving node up.
#   debian: Debian 12's UCX 1.13 with verbs and rdmacm (RDMA), where a reader dying during
#     wire-up can abort the serving node inside UCX.
# UCX's transport modules (ucx/ beside libucs, which ldd does not list) are copied with what they
# link. No CUDA toolkit in this stage: the kernels' CPU fallbacks serve the CLI's codec commands.
ARG UCX=wheel
RUN set -e; \
    if [ "$UCX" = debian ]; then \
      cmake --preset release -DKVSTASH_CUDA=OFF -DKVSTASH_BENCH=OFF; \
      cmake --build build/release --target cachesvc kvstash -j"$(nproc)"; B=build/release; \
    elif [ "$UCX" = wheel ]; then \
      KVSTASH_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DKVSTASH_CUDA=OFF -DKVSTASH_BENCH=OFF" \
        scripts/build_ucx_cuda.sh cachesvc kvstash; B=build/ucx-cuda; \
    else echo "UCX must be wheel or debian, not '$UCX'" >&2; exit 1; fi; \
    mkdir -p /out/bin /out/lib/ucx /out/ibverbs.d /out/ibverbs-providers; \
    cp "$B/cachesvc/cachesvc" "$B/cli/kvstash" /out/bin/; \
    ucxlib=$(dirname "$(readlink -f "$(ldd /out/bin/cachesvc | awk '/libucs\.so/{print $3}')")"); \
    cp -a "$ucxlib"/ucx/*.so* /out/lib/ucx/; \
    ldd /out/bin/cachesvc /out/bin/kvstash "$ucxlib"/ucx/*.so.0 | awk '/=> \//{print $3}' | sort -u \
      | grep -v -E '/lib(c|m|pthread|dl|rt)\.so' | xargs -I{} cp -L {} /out/lib/; \
    if [ -e /out/lib/libibverbs.so.1 ] && [ -d /etc/libibverbs.d ]; then \
      cp -a /etc/libibverbs.d/. /out/ibverbs.d/; \
      cp -a /usr/lib/x86_64-linux-gnu/libibverbs/. /out/ibverbs-providers/; fi

FROM debian:12-slim
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/lib/ /usr/local/lib/kvstash/
# RDMA device drivers for libibverbs (UCX=debian; empty folders with the wheel's UCX).
COPY --from=build /out/ibverbs.d/ /etc/libibverbs.d/
COPY --from=build /out/ibverbs-providers/ /usr/lib/x86_64-linux-gnu/libibverbs/
RUN echo /usr/local/lib/kvstash > /etc/ld.so.conf.d/kvstash.conf && ldconfig \
 && cachesvc --version
USER 65532:65532
ENTRYPOINT ["cachesvc"]
