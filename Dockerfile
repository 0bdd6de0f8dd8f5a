# syntax=docker/dockerfile:1
# hookbridge: one static binary in a distroless image, running as non-root.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/hookbridge ./cmd/hookbridge \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/hookbridge /hookbridge
# The home of the embedded queue and of the ingress's spool
# (--spool sqlite:/var/lib/hookbridge/spool.db), writable by the nonroot user
# (65532). Mount a persistent volume here: without one, Docker gives each
# container an anonymous volume, which outlives restarts but not removal.
COPY --from=build --chown=65532:65532 /out/data /var/lib/hookbridge
VOLUME ["/var/lib/hookbridge"]
WORKDIR /var/lib/hookbridge
USER 65532:65532
# 8080: the public listener; 9090: the private admin listener (keep it private).
EXPOSE 8080 9090
ENTRYPOINT ["/hookbridge"]
CMD ["ingress"]
