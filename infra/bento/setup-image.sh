#!/bin/sh
# Runs as root while `bentoml containerize` builds the image (infra/bento/build-options.yaml).
#
# A Bento records where its live routing state lives (BentoConfig.routing_db) as a path under
# the LOOPLINE_HOME of the worker that built it. The compose and Kubernetes workers use
# /data/loopline, so the served container keeps that state under /data/loopline/serving: create
# it for the unprivileged `bentoml` user the image runs as (a volume mounted there starts with
# this ownership).
set -eu
mkdir -p /data/loopline/serving
chown -R bentoml:bentoml /data/loopline
