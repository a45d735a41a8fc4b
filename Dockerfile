# The operator image: `docker build -t clusterpool-operator:0.1.0 .`
# BASE_IMAGE is the public python image for users; a local stand-in with the same layout
# can be given with --build-arg (scripts/images.py does so where nothing can be pulled).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install .

FROM ${BASE_IMAGE}
COPY --from=build /install /usr/local
USER 65532:65532
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["python", "-m", "clusterpool"]
