# The operator image. `make release` builds it with the version, revision and date below
# filled in; by hand: `docker build --build-arg VERSION=$(make -s version) -t ghcr.io/clusterpool/clusterpool-operator:$(make -s version) .`
#
# BASE_IMAGE is python:3.11-slim pinned by digest (a multi-arch index; refresh the digest
# deliberately, never by a moving tag). A local stand-in with the same layout can be given
# with --build-arg (scripts/images.py does so where nothing can be pulled).
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${BASE_IMAGE} AS build
WORKDIR /src
# Third-party packages: exactly the versions of the lock, each checked against its hash.
COPY requirements/ ./requirements/
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.lock \
 && pip install --no-cache-dir --require-hashes --no-deps --prefix=/install -r requirements/operator.lock
# The project's two distributions, laid out by distributions/layout.py and built here.
COPY LICENSE README.md ./
COPY distributions ./distributions
COPY operator ./operator
RUN python distributions/layout.py /stage \
 && pip install --no-cache-dir --no-deps --no-build-isolation --prefix=/install \
      /stage/clusterpool-client /stage/clusterpool-operator

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="clusterpool-operator" \
      org.opencontainers.image.description="A Kubernetes operator for pools of LLM backends: discovered, health-checked, balanced, cached, failed over." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="The ClusterPool Operator authors" \
      org.opencontainers.image.source="https://github.com/clusterpool/clusterpool-operator" \
      org.opencontainers.image.documentation="https://github.com/clusterpool/clusterpool-operator/blob/main/docs/install.md" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
COPY --from=build /install /usr/local
COPY LICENSE /usr/share/doc/clusterpool-operator/LICENSE
USER 65532:65532
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["python", "-m", "clusterpool"]
