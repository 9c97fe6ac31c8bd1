# syntax=docker/dockerfile:1
# pgmux container image.
#
#   docker build -t pgmux .
#   docker run -p 6432:6432 -p 9187:9187 -v $PWD/pgmux.yaml:/etc/pgmux/pgmux.yaml:ro pgmux
#
# The config file must enable the HTTP listener on port 9187 (`http: 0.0.0.0:9187`): the
# HEALTHCHECK below and the Kubernetes probes (deploy/kubernetes/) call /healthz and /readyz
# there. Any setting can also come from PGMUX_<KEY> environment variables.

# Node 24 LTS (Node 20 reached end of life on 2026-04-30; pgmux still runs and is tested on it:
# `docker build --build-arg NODE_IMAGE=node:20-bookworm-slim .` if you must).
ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: compile TypeScript to dist/ ----------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: package.json's prepare (the build, for `npx pgmux` in a clone) would run
# before src/ is here; the build is the step below.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies and dist/ only ---------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
# A placeholder config directory; mount the real pgmux.yaml over it.
RUN mkdir -p /etc/pgmux && chown -R 1000:1000 /etc/pgmux

# The node image's unprivileged "node" user, by number so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000

# 6432: PostgreSQL protocol (listen); 9187: HTTP /metrics, /healthz, /readyz, /status (http).
EXPOSE 6432 9187

# /healthz answers 200 while the process is alive (readiness is /readyz, for load balancers).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9187/healthz',{signal:AbortSignal.timeout(2500)}).then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))"]

# SIGTERM: stop accepting, let running transactions finish (shutdown_timeout), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["start", "--config", "/etc/pgmux/pgmux.yaml"]
