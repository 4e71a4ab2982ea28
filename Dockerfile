# Herald: one static binary (manager, dispatcher and CLI) on a distroless
# base. Build with `docker build -t herald:dev .`.

ARG GO_VERSION=1.26
# BASE_IMAGE is the runtime base: a distroless "static" image running as
# the nonroot user (65532). Pass the full reference from the registry your
# cluster trusts, e.g. --build-arg BASE_IMAGE=<registry>/distroless/static:nonroot.
ARG BASE_IMAGE=distroless/static:nonroot

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first, so code changes reuse the module layer.
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY internal/ internal/
COPY pkg/ pkg/
ARG TARGETOS=linux
ARG TARGETARCH=amd64
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w" -o /out/herald ./cmd/herald

FROM ${BASE_IMAGE}
WORKDIR /
COPY --from=build /out/herald /herald
USER 65532:65532
ENTRYPOINT ["/herald"]
