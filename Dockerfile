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
# No CUDA toolkit in this stage: the kernels' CPU fallbacks serve the CLI's codec commands.
RUN cmake --preset release -DKVSTASH_CUDA=OFF -DKVSTASH_BENCH=OFF \
 && cmake --build build/release --target cachesvc kvstash -j"$(nproc)" \
 && mkdir -p /out/bin /out/lib \
 && cp build/release/cachesvc/cachesvc build/release/cli/kvstash /out/bin/ \
 && ldd /out/bin/cachesvc /out/bin/kvstash | awk '/=> \//{print $3}' | sort -u \
      | grep -v -E '/lib(c|m|pthread|dl|rt)\.so' | xargs -I{} cp -L {} /out/lib/

FROM debian:12-slim
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/lib/ /usr/local/lib/kvstash/
RUN echo /usr/local/lib/kvstash > /etc/ld.so.conf.d/kvstash.conf && ldconfig \
 && cachesvc --version
USER 65532:65532
ENTRYPOINT ["cachesvc"]
